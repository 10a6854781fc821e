"""The demo's text-to-text task and the tiny T5 that learns it: the built-in model ``demo-t5`` and the
data ``demo:seq2seq`` / ``demo:seq2seq-heldout``.

Each record asks one of the demo animals' facts (build.py's ANIMALS) and the target is the fact alone,
one word: ``{"input": "Which noise does a cow make?", "target": "moo"}``. Every attribute is asked in
three wordings; for each animal and attribute one wording is held out, so a held-out question asks a
fact the training data taught through the other two wordings, in words it used for other animals.
Exact match on the held-out questions (tests/test_seq2seq.py, docs/seq2seq.md) shows what training
taught beyond the questions it saw.

The model follows T5's conventions (T5 v1.1 / mT5 layout: gated-GELU feed-forward, untied head):
``<pad>`` (id 0) starts the decoder, ``</s>`` (id 1) ends every input and target, the tokenizer appends
it. Random weights, seeded; a byte-level BPE tokenizer trained with ``tokenizers`` on the demo's text;
saved with save_pretrained and loaded back through from_pretrained; built atomically under a lock.
"""

from __future__ import annotations

from pathlib import Path

from tuiwiz.demo.build import ANIMALS, DEMO_SEED, animal_facts, tokenizer_corpus
from tuiwiz.paths import cache_dir

DEMO_T5_VERSION = 1

# attribute -> its wordings; the answer is the fact alone
WORDINGS = {
    "sound": ("What sound does the {a} make?", "Which noise does a {a} make?", "What does the {a} say?"),
    "color": ("What color is the {a}?", "Which colour does a {a} have?", "The {a} has what color?"),
    "home": ("Where does the {a} live?", "Which place is home to a {a}?", "The {a} lives where?"),
    "food": ("What does the {a} eat?", "Which food does a {a} like?", "The {a} feeds on what?"),
}
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2


def fact_questions() -> tuple[list[dict], list[dict]]:
    """(train, held_out) records. Deterministic: the held-out wording of an animal's attribute rotates, so
    each wording is held out for some animals and trained for the others."""
    train, held_out = [], []
    for animal_index, animal in enumerate(ANIMALS):
        facts = animal_facts(animal)
        for attribute_index, (attribute, wordings) in enumerate(WORDINGS.items()):
            held = (animal_index + attribute_index) % len(wordings)
            for index, wording in enumerate(wordings):
                record = {"input": wording.format(**facts), "target": facts[attribute]}
                (held_out if index == held else train).append(record)
    return train, held_out


def records(name: str) -> list[dict]:
    """The records of ``demo:seq2seq`` (training) and ``demo:seq2seq-heldout`` (evaluation)."""
    import random

    train, held_out = fact_questions()
    if name == "seq2seq":
        random.Random(f"{DEMO_SEED}-{name}").shuffle(train)
        return train
    if name == "seq2seq-heldout":
        return held_out
    raise KeyError(name)


# --- the model -------------------------------------------------------------------

def demo_t5_dir() -> Path:
    return cache_dir() / f"demo-t5-v{DEMO_T5_VERSION}"


def ensure_demo_t5() -> Path:
    """The demo T5's folder, built on first use (a few seconds)."""
    from tuiwiz.demo.build import build_atomically

    return build_atomically(demo_t5_dir(), _build_model)


def _build_tokenizer(staging: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    train, held_out = fact_questions()
    text = tokenizer_corpus() + [f"{r['input']} {r['target']}" for r in train + held_out]
    tok.train_from_iterator(text, trainer=trainer)
    # T5's tokenizer ends every sequence with </s>: inputs, and targets (text_target=) alike
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=512, padding_side="right")
    fast.save_pretrained(staging)
    return fast


def _build_model(staging: Path) -> None:
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    tokenizer = _build_tokenizer(staging)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=128, d_kv=32, d_ff=256, num_layers=3, num_decoder_layers=3,
        num_heads=4, relative_attention_num_buckets=32, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(DEMO_SEED)
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=16,
    )
    model.save_pretrained(staging, safe_serialization=True)
    (staging / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n# tuiwiz demo T5\n\n"
        "A tiny T5-style encoder-decoder with random weights and a locally trained tokenizer,\n"
        "built by tuiwiz for its seq2seq demo and tests. It knows nothing until you fine-tune it.\n",
        encoding="utf-8",
    )
