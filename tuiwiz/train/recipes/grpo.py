"""Reinforcement learning on sampled completions: TRL's GRPOTrainer, or its RLOOTrainer (``grpo.algorithm``).

setup: prompts -> tokenizer -> model with the method -> rewards (tuiwiz/train/rewards.py) -> trainer; then
train and save (session.py). Completions are sampled with transformers' generate (no vLLM). Each step
samples ``grpo.num_generations`` completions per prompt, scores them with every reward, and moves the
policy toward the completions that beat their group's mean. TRL logs ``reward``, ``reward_std`` and
``rewards/NAME/mean`` (they reach LogEvent.task_metrics); SamplesCallback shows sampled completions.
"""

from __future__ import annotations

import os

from tuiwiz.data.datasets import LoadedData
from tuiwiz.data.files import data_error
from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.reward_model import as_messages
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import total_steps, training_arguments, world_size
from tuiwiz.train.callbacks import RunnerCallback, method_callbacks
from tuiwiz.train.examples import load_data
from tuiwiz.train.modeling import Precision, cap_head_tiles, load_tokenizer, load_trainable_model, resolve_precision
from tuiwiz.train.rewards import grpo_rewards
from tuiwiz.train.session import Setup, train_and_save, trained_rows
from tuiwiz.train.start import starting_model
from tuiwiz.train.stop import StopFlag


def train(run: RunDir, profile: Profile, *, resume: bool, events: EventWriter | None,
          stop: StopFlag) -> StatusEvent:
    callback = RunnerCallback(events, stop)
    setup = set_up(profile, run, [callback], events)
    return train_and_save(run, profile, setup, callback, resume=resume, events=events, stop=stop)


def set_up(profile: Profile, run: RunDir, callbacks: list, events: EventWriter | None = None) -> Setup:
    """Everything from the frozen profile to a ready Trainer."""
    import transformers

    transformers.logging.set_verbosity_warning()
    precision = resolve_precision(profile)
    cap_head_tiles(precision)
    model_path = starting_model(profile, run)
    train_data, eval_data = load_data(profile)
    check_answers(profile, train_data)
    tokenizer = load_tokenizer(model_path, profile)
    steps = total_steps(profile, trained_rows(profile, len(train_data.records)), world_size())
    model = load_trainable_model(model_path, profile, precision, tokenizer, steps)
    functions, weights, reward_callbacks = grpo_rewards(profile, reward_device(precision), events)
    callbacks = callbacks + reward_callbacks + method_callbacks(profile, model.model)
    trainer = build_trainer(profile, run, precision, model.model, tokenizer, train_data, eval_data,
                            functions, weights, callbacks)
    return Setup(trainer, tokenizer, model_path, precision, model, train_data.format)


def reward_device(precision: Precision) -> str:
    """Where a reward model runs: beside this rank's policy."""
    return "cpu" if precision.device == "cpu" else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def check_answers(profile: Profile, data: LoadedData) -> None:
    """An exact-answer reward needs answers (preflight checked local data; a hub dataset is checked here)."""
    if any(r.type == "exact_answer" for r in profile.grpo.rewards) and all(r["answer"] is None for r in data.records):
        raise UserError(f"an exact_answer reward compares with the data's answer column, and {data.path} has none",
                        hint="add an answer column (or map yours with data.columns.answer), or use another reward",
                        file=data.path, field="data.columns.answer", kind="data")


def prompt_rows(data: LoadedData, tokenizer, profile: Profile) -> list[dict]:
    """The prompts as TRL samples from them: chat messages where the model has a chat template (as SFT trained
    it), text otherwise; a prompt longer than grpo.max_prompt_length is refused with its line."""
    limit = profile.grpo.max_prompt_length or profile.data.max_length
    field = profile.data.columns.prompt or "prompt"
    rows = []
    for record, line in zip(data.records, data.source_lines):
        prompt = record["prompt"]
        if tokenizer.chat_template:
            prompt = as_messages(prompt)
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        elif isinstance(prompt, str):
            length = len(tokenizer(prompt)["input_ids"])
        else:
            raise data_error("the prompt is chat messages, but the model's tokenizer has no chat template", data.path,
                             line, field, hint="use a chat (instruct) model, or give the prompts as text")
        if length > limit:
            raise data_error(f"the prompt is {length} tokens, more than the {limit} allowed", data.path, line, field,
                             hint="raise grpo.max_prompt_length (or data.max_length), or shorten the prompt")
        # the record's other columns too: TRL hands every column to the reward functions by name
        rows.append({**record.get("columns", {}), "prompt": prompt, "answer": record["answer"]})
    return rows


def build_trainer(profile: Profile, run: RunDir, precision, model, tokenizer, train_data, eval_data, functions,
                  weights, callbacks):
    from datasets import Dataset

    grpo = profile.grpo
    if grpo.algorithm == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    options = {"loss_type": grpo.loss_type} if grpo.loss_type else {}
    if profile.training.pad_to_max_length:  # the worst case (the probe): every completion runs its full length
        options["generation_kwargs"] = {"min_new_tokens": grpo.max_completion_length}
    # TRL counts the prompt and completion tokens into state.num_input_tokens_seen itself; the Trainer's own
    # count looks for input_ids, which GRPO's batches lack, and would warn at every step
    arguments = {**training_arguments(profile, precision, run, eval_data is not None),
                 "include_num_input_tokens_seen": "no"}
    config = Config(
        **arguments, **options,
        num_generations=grpo.num_generations, max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature, beta=grpo.beta, reward_weights=weights,
        log_completions=False,  # SamplesCallback shows them; TRL's own would print tables into the log
    )
    return Trainer(
        model=model, reward_funcs=functions, args=config,
        train_dataset=Dataset.from_list(prompt_rows(train_data, tokenizer, profile)),
        eval_dataset=Dataset.from_list(prompt_rows(eval_data, tokenizer, profile)) if eval_data else None,
        processing_class=tokenizer, callbacks=callbacks,
    )
