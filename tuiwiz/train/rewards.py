"""GRPO's rewards: the built-in verifiable ones, a trained reward model, users' own Python functions,
and the live samples they leave for the monitor.

Every reward is a function in TRL's form, ``fn(prompts, completions, **columns) -> list[float | None]``
(None: not scorable, left out of the group's baseline). TRL sums them by ``reward_weights``. A
``SampleRecorder`` wraps each one, so the last batch's completions and every function's share are at
hand when the Trainer logs, and ``SamplesCallback`` writes them as a ``SamplesEvent``.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import string
import sys
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from tuiwiz.data.preference import prompt_text
from tuiwiz.profile.schema import (
    ExactAnswerReward,
    FormatReward,
    LengthReward,
    ModelReward,
    Profile,
    PythonReward,
    Reward,
)
from tuiwiz.run.event_types import SamplesEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.reward_checks import reward_run
from tuiwiz.run.reward_model import completion_text, load_reward_model, reward_text, score_texts

RewardFunction = Callable[..., list]

# Stripped from both ends of an answer before comparing; + and - stay, they are a number's sign.
_SURROUNDING = string.whitespace + "".join(c for c in string.punctuation if c not in "+-")


def normalise_answer(text: str) -> str:
    """An answer as compared: case folded, surrounding punctuation and whitespace gone."""
    return text.strip(_SURROUNDING).casefold()


def extract_answer(pattern: re.Pattern, text: str) -> str | None:
    """The pattern's first group (or whole match) in the text, normalised; None when it does not match."""
    found = pattern.search(text)
    if found is None:
        return None
    value = found.group(1) if pattern.groups and found.group(1) is not None else found.group(0)
    return normalise_answer(value)


def exact_answer_reward(reward: ExactAnswerReward) -> RewardFunction:
    pattern = re.compile(reward.pattern)

    def exact_answer(prompts, completions, answer=None, **kwargs) -> list[float | None]:
        answers = answer if answer is not None else [None] * len(completions)
        return [None if want is None else float(extract_answer(pattern, completion_text(c)) == normalise_answer(want))
                for c, want in zip(completions, answers)]

    return exact_answer


def format_reward(reward: FormatReward) -> RewardFunction:
    pattern = re.compile(reward.pattern)

    def matches_format(prompts, completions, **kwargs) -> list[float]:
        return [float(pattern.search(completion_text(c)) is not None) for c in completions]

    return matches_format


def length_reward(reward: LengthReward) -> RewardFunction:
    def length(prompts, completions, **kwargs) -> list[float]:
        return [-min(1.0, abs(len(completion_text(c)) - reward.target) / reward.target) for c in completions]

    return length


def model_reward(reward: ModelReward, index: int, device: str) -> RewardFunction:
    """A reward run's score of prompt + completion, rendered as it was trained (tuiwiz/run/reward_model.py)."""
    model, tokenizer = load_reward_model(reward_run(reward.path, field=f"grpo.rewards[{index}].path"), device)

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        return score_texts(model, tokenizer, [reward_text(tokenizer, p, c) for p, c in zip(prompts, completions)])

    return reward_model


def python_reward(reward: PythonReward, index: int) -> RewardFunction:
    """The user's function, imported from its file (preflight checked that it defines it, without running it)."""
    path = Path(reward.file)
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    spec = importlib.util.spec_from_file_location(f"tuiwiz_reward_{index}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, reward.function)


def reward_function(reward: Reward, index: int, device: str) -> RewardFunction:
    if isinstance(reward, ExactAnswerReward):
        return exact_answer_reward(reward)
    if isinstance(reward, FormatReward):
        return format_reward(reward)
    if isinstance(reward, LengthReward):
        return length_reward(reward)
    if isinstance(reward, ModelReward):
        return model_reward(reward, index, device)
    return python_reward(reward, index)


def reward_names(rewards: list[Reward]) -> list[str]:
    """Each reward's name in the logs (``rewards/NAME/mean``) and the samples: its type, or a Python function's
    name; a repeated name gets _2, _3."""
    names: list[str] = []
    for reward in rewards:
        base = reward.function if isinstance(reward, PythonReward) else reward.type
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


class SampleRecorder:
    """Keeps the latest batch each wrapped reward function scored: prompts, completions, each function's rewards."""

    def __init__(self, names: list[str], weights: list[float]) -> None:
        self.weights = dict(zip(names, weights))
        self._completions: list | None = None  # the batch being scored (TRL hands every function the same list)
        self.prompts: list = []
        self.rewards: dict[str, list] = {}
        self.fresh = False  # a batch not yet shown

    def wrap(self, name: str, function: RewardFunction) -> RewardFunction:
        def note(prompts, completions, values):
            if completions is not self._completions:
                self._completions, self.prompts, self.rewards = completions, list(prompts), {}
            self.rewards[name] = list(values)
            self.fresh = True
            return values

        if inspect.iscoroutinefunction(function):  # TRL awaits async reward functions side by side
            async def recorded_async(prompts, completions, **kwargs):
                return note(prompts, completions, await function(prompts=prompts, completions=completions, **kwargs))

            recorded_async.__name__ = name
            return recorded_async

        def recorded(prompts, completions, **kwargs):
            return note(prompts, completions, function(prompts=prompts, completions=completions, **kwargs))

        recorded.__name__ = name  # TRL names the reward's curves after it
        return recorded

    def samples(self, limit: int) -> list[dict]:
        """At most ``limit`` of the latest batch, spread over it (so over its prompts), with their rewards."""
        count = len(self._completions or [])
        picked = sorted({i * count // limit for i in range(limit)}) if count and limit else []
        samples = []
        for i in picked:
            shares = {name: _number(values[i]) for name, values in self.rewards.items()}
            total = sum(self.weights[name] * value for name, value in shares.items() if value is not None)
            samples.append({"prompt": _shown(self.prompts[i]), "completion": completion_text(self._completions[i]),
                            "reward": total, "rewards": shares})
        self.fresh = False
        return samples


def _shown(prompt) -> str:
    """A prompt for the monitor: a lone user turn as its text, a conversation turn by turn."""
    return prompt[0]["content"] if isinstance(prompt, list) and len(prompt) == 1 else prompt_text(prompt)


def _number(value) -> float | None:
    return None if value is None or value != value else float(value)  # NaN (not scorable) as null


class SamplesCallback(TrainerCallback):
    """At each training log, the latest sampled completions with their rewards, as a SamplesEvent."""

    def __init__(self, recorder: SampleRecorder, events: EventWriter | None, limit: int) -> None:
        self.recorder, self.events, self.limit = recorder, events, limit

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.events is None or not self.limit or "loss" not in (logs or {}) or not self.recorder.fresh:
            return
        self.events.emit(SamplesEvent(step=state.global_step, samples=self.recorder.samples(self.limit)))


def grpo_rewards(profile: Profile, device: str, events: EventWriter | None) -> tuple[list, list[float], list]:
    """(reward functions for TRL, their weights, the callbacks that show their samples)."""
    rewards = profile.grpo.rewards
    names = reward_names(rewards)
    weights = [reward.weight for reward in rewards]
    recorder = SampleRecorder(names, weights)
    functions = [recorder.wrap(name, reward_function(reward, i, device))
                 for i, (name, reward) in enumerate(zip(names, rewards))]
    return functions, weights, [SamplesCallback(recorder, events, profile.grpo.log_completions)]
