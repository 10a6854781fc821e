"""The built-in demo: a tiny Llama-style model and the datasets it learns, built locally.

Nothing is downloaded. The model has random weights (seeded) and a byte-level BPE
tokenizer trained with ``tokenizers`` on text this module writes; it is saved with
``save_pretrained`` and loaded afterwards through the real ``from_pretrained`` path.
The datasets come from one small world of facts, so that the tiny model visibly
learns them in a minute of CPU training. Held-out prompts (never trained on) let
``bench/demo_learning.py`` measure what the quickstart taught.

Building is deterministic and atomic: a staging folder renamed into place under a
lock, so two processes never see half a model.
"""

from __future__ import annotations

import fcntl
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.files import staged_folder
from tuiwiz.paths import cache_dir

DEMO_VERSION = 2
DEMO_SEED = 1234

DEMO_DATASETS = {
    "alpaca": "instruction/output pairs about animals and numbers (SFT)",
    "chat": "two-turn chat conversations on the same facts (SFT, chat template)",
    "text": "plain sentences on the same facts (continued pretraining)",
    "classification": "English sentences labelled sports, food, weather or tech",
}

# The tasks past SFT: name -> (module of tuiwiz.demo with a ``records(name)`` function, what it holds).
# Each is built into a folder of its own on first use; the tokenizer never sees them, so adding one
# leaves the demo model as it is.
TASK_DATASETS = {
    "preference": ("preference", "chosen/rejected replies to the demo questions: chosen ones begin 'Sure!' "
                                 "(DPO, ORPO, SimPO, reward models)"),
    "preference-heldout": ("preference", "the same pairs for the held-out questions (evaluation)"),
    "kto": ("preference", "the preference pairs as single completions labelled desirable or not (KTO)"),
    "arithmetic": ("arithmetic", "addition questions with their answers, checked by exact match (GRPO)"),
    "arithmetic-heldout": ("arithmetic", "held-out addition questions (evaluation)"),
    "compare": ("compare", "'Which is bigger, seven or three?' with its answer, checked by exact match (GRPO)"),
    "compare-sft": ("compare", "other pairs of number words with the bigger one as the reply (SFT before GRPO)"),
    "compare-heldout": ("compare", "pairs that neither SFT nor GRPO trains on (evaluation)"),
    "seq2seq": ("seq2seq", "text-to-text pairs for the demo T5 (seq2seq)"),
    "seq2seq-heldout": ("seq2seq", "held-out text-to-text pairs (evaluation)"),
}
TASK_DATA_VERSION = 2

# name, sound, colour, home, food
ANIMALS = (
    ("cow", "moo", "brown", "barn", "grass"),
    ("cat", "meow", "black", "house", "fish"),
    ("dog", "woof", "white", "house", "meat"),
    ("duck", "quack", "yellow", "pond", "bread"),
    ("sheep", "baa", "white", "field", "grass"),
    ("pig", "oink", "pink", "farm", "corn"),
    ("horse", "neigh", "brown", "stable", "hay"),
    ("owl", "hoot", "grey", "tree", "mice"),
    ("frog", "croak", "green", "pond", "flies"),
    ("lion", "roar", "gold", "savanna", "meat"),
    ("bee", "buzz", "yellow", "hive", "nectar"),
    ("goat", "bleat", "white", "hill", "leaves"),
    ("mouse", "squeak", "grey", "hole", "cheese"),
    ("crow", "caw", "black", "tree", "seeds"),
    ("wolf", "howl", "grey", "forest", "meat"),
    ("hen", "cluck", "red", "coop", "seeds"),
    ("bear", "growl", "brown", "cave", "honey"),
    ("snake", "hiss", "green", "grass", "eggs"),
    ("donkey", "bray", "grey", "farm", "hay"),
    ("goose", "honk", "white", "lake", "grass"),
)

QUESTIONS = (
    ("What sound does the {a} make?", "The {a} says {sound}."),
    ("What color is the {a}?", "The {a} is {color}."),
    ("Where does the {a} live?", "The {a} lives in the {home}."),
    ("What does the {a} eat?", "The {a} eats {food}."),
)

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")

# One fixed template per (question, animal) pair is held out: every fact is still seen
# through the other questions, but these exact prompts never are.
HELD_OUT_EVERY = 5

TOPICS = {
    "sports": (
        ["The striker scored a late goal", "Our team won the final", "The runner broke the record",
         "The referee showed a red card", "She served an ace to win the set", "The coach changed the lineup",
         "He hit a home run in the ninth inning", "The cyclists climbed the mountain stage",
         "The goalkeeper saved a penalty", "The swimmer touched the wall first"],
        ["at the stadium", "last night", "in the championship", "after extra time", "before a huge crowd"],
    ),
    "food": (
        ["The soup needs more salt", "I baked fresh bread", "This pasta sauce is delicious",
         "The chef grilled the salmon", "We ordered spicy noodles", "The cake tastes of vanilla",
         "She chopped onions for the curry", "The salad has ripe tomatoes", "He roasted vegetables",
         "The pancakes were fluffy"],
        ["for dinner", "this morning", "at the restaurant", "in the kitchen", "for the party"],
    ),
    "weather": (
        ["Heavy rain is expected", "The sky cleared up", "A cold front is moving in",
         "Strong winds knocked down branches", "It snowed all night", "The forecast says sunshine",
         "Thunderstorms rolled across the valley", "Fog covered the coast", "The temperature dropped below zero",
         "A heat wave hit the city"],
        ["this weekend", "in the north", "tomorrow afternoon", "along the coast", "overnight"],
    ),
    "tech": (
        ["The new phone has a faster chip", "The software update fixed the bug", "Our server crashed",
         "The laptop battery lasts all day", "They released an open source library", "The app keeps freezing",
         "The company launched a new processor", "He wrote a script to back up files",
         "The network went down", "The database query is slow"],
        ["after the upgrade", "at the office", "this quarter", "in the latest version", "during the demo"],
    ),
}

# ChatML with {% generation %} around the assistant's text, so TRL can train on it alone.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")


def demo_model_dir() -> Path:
    return cache_dir() / f"demo-model-v{DEMO_VERSION}"


def demo_data_dir() -> Path:
    return cache_dir() / f"demo-data-v{DEMO_VERSION}"


@contextmanager
def _build_lock(name: str) -> Iterator[None]:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_atomically(final: Path, build) -> Path:
    """Run ``build(staging)`` and rename the staging folder into place, once."""
    if (final / ".complete").exists():
        return final
    with _build_lock(final.name):
        if (final / ".complete").exists():
            return final
        with staged_folder(final) as staging:
            build(staging)
            (staging / ".complete").write_text("ok\n")
    return final


# --- the facts -----------------------------------------------------------------

def animal_facts(animal: tuple) -> dict:
    name, sound, color, home, food = animal
    return {"a": name, "sound": sound, "color": color, "home": home, "food": food}


def qa_pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held_out) question/answer pairs. Deterministic."""
    train, held_out = [], []
    index = 0
    for animal in ANIMALS:
        facts = animal_facts(animal)
        for question, answer in QUESTIONS:
            pair = (question.format(**facts), answer.format(**facts))
            (held_out if index % HELD_OUT_EVERY == 2 else train).append(pair)
            index += 1
    for x in range(10):
        for y in range(10):
            if x + y < len(NUMBERS):
                pair = (f"What is {NUMBERS[x]} plus {NUMBERS[y]}?",
                        f"{NUMBERS[x]} plus {NUMBERS[y]} is {NUMBERS[x + y]}.")
                (held_out if (x * 10 + y) % 9 == 4 else train).append(pair)
    return train, held_out


def _alpaca_records(rng: random.Random) -> list[dict]:
    train, _ = qa_pairs()
    records = [{"instruction": q, "input": "", "output": a} for q, a in train]
    rng.shuffle(records)
    return records


def _chat_records(rng: random.Random) -> list[dict]:
    train, _ = qa_pairs()
    records = []
    for _ in range(240):
        (q1, a1), (q2, a2) = rng.sample(train, 2)
        messages = [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
            {"role": "user", "content": q2}, {"role": "assistant", "content": a2},
        ]
        records.append({"messages": messages})
    return records


def _text_records(rng: random.Random) -> list[dict]:
    records = []
    for animal in ANIMALS:
        f = animal_facts(animal)
        sentences = [
            f"The {f['a']} says {f['sound']}.", f"The {f['a']} is {f['color']}.",
            f"The {f['a']} lives in the {f['home']}.", f"The {f['a']} eats {f['food']}.",
        ]
        for _ in range(6):
            rng.shuffle(sentences)
            records.append({"text": " ".join(sentences)})
    rng.shuffle(records)
    return records


def _classification_records(rng: random.Random) -> list[dict]:
    records = []
    for label, (subjects, tails) in TOPICS.items():
        for subject in subjects:
            for tail in tails:
                records.append({"text": f"{subject} {tail}.", "label": label})
    rng.shuffle(records)
    return records


_BUILDERS = {
    "alpaca": _alpaca_records,
    "chat": _chat_records,
    "text": _text_records,
    "classification": _classification_records,
}


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _build_datasets(staging: Path) -> None:
    for name, builder in _BUILDERS.items():
        _write_jsonl(staging / f"{name}.jsonl", builder(random.Random(f"{DEMO_SEED}-{name}")))
    _, held_out = qa_pairs()
    _write_jsonl(staging / "heldout.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in held_out])


def ensure_demo_datasets() -> Path:
    return build_atomically(demo_data_dir(), _build_datasets)


def _task_dataset_file(name: str) -> Path:
    return cache_dir() / f"demo-{name}-v{TASK_DATA_VERSION}" / f"{name}.jsonl"


def _build_task_dataset(name: str) -> Path:
    from importlib import import_module

    module = import_module(f"tuiwiz.demo.{TASK_DATASETS[name][0]}")
    file = _task_dataset_file(name)
    build_atomically(file.parent, lambda staging: _write_jsonl(staging / file.name, module.records(name)))
    return file


def _known(name: str) -> None:
    if name not in DEMO_DATASETS and name not in TASK_DATASETS and name != "heldout":
        raise UserError(
            f"there is no demo dataset '{name}'",
            hint="demo datasets: " + ", ".join(f"demo:{n}" for n in (*DEMO_DATASETS, *TASK_DATASETS)), kind="data",
        )


def ensure_demo_dataset(name: str) -> Path:
    _known(name)
    if name in TASK_DATASETS:
        return _build_task_dataset(name)
    return ensure_demo_datasets() / f"{name}.jsonl"


def resolve_demo_uri(value: str, *, build: bool = True) -> Path:
    """``demo:NAME`` to the file that holds it (built unless ``build`` is False)."""
    name = value.split(":", 1)[1]
    _known(name)
    if build:
        return ensure_demo_dataset(name)
    return _task_dataset_file(name) if name in TASK_DATASETS else demo_data_dir() / f"{name}.jsonl"


# --- the model -------------------------------------------------------------------

def tokenizer_corpus() -> list[str]:
    """Text the tokenizer is trained on: every demo dataset, rendered as the model sees it."""
    rng = random.Random(DEMO_SEED)
    lines: list[str] = []
    for name, builder in _BUILDERS.items():
        for record in builder(random.Random(f"{DEMO_SEED}-{name}")):
            if "messages" in record:
                lines.extend(m["content"] for m in record["messages"])
            else:
                lines.extend(str(v) for v in record.values() if v)
    train, held_out = qa_pairs()
    lines.extend(f"{q} {a}" for q, a in train + held_out)
    lines.extend(["### Instruction:", "### Input:", "### Response:", "system", "user", "assistant"])
    rng.shuffle(lines)
    return lines


def _build_tokenizer(staging: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token=None, model_max_length=512, padding_side="right",
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(staging)
    return fast


def _build_model(staging: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(staging)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
        # Wider than the usual 0.02: with frozen random embeddings and head, a small init
        # caps the logits' range and no adapter could make the model confident.
        initializer_range=0.1,
        # Biases (as in Qwen2's attention) give BitFit something to train.
        attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(DEMO_SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=32,
    )
    model.save_pretrained(staging, safe_serialization=True)
    (staging / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n# tuiwiz demo model\n\n"
        "A tiny Llama-style model with random weights and a locally trained tokenizer,\n"
        "built by tuiwiz for its demo and tests. It knows nothing until you fine-tune it.\n",
        encoding="utf-8",
    )


def ensure_demo_model() -> Path:
    """The demo model's folder, built on first use (a few seconds)."""
    return build_atomically(demo_model_dir(), _build_model)
