"""Peak memory of real training steps on the CPU, measured in a fresh process (``python -m tests.support.step_memory
CASES.json``): TRL's own trainers (SFT, DPO, reward, GRPO) on a small random Llama, transformers' Seq2SeqTrainer on
a small random T5, each stepping a few times, with the runner's fused-head tile and fused LoRA. ``saved_in_block``
counts what one block saves, in this process.

A step's peak is the resident set's high-water mark (VmHWM, reset through /proc/self/clear_refs as the step begins)
minus the resident set at that moment: what the step adds on top of weights and optimizer states. The parent sets
MALLOC_MMAP_THRESHOLD_ so that large tensors are mapped and unmapped with the step, not kept in malloc's heap.
GRPO's generation phase is measured apart from its forward/backward (the high-water mark is reset between them).
Prints one JSON line per case.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=384, intermediate_size=1024,
             num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=6, vocab_size=4096,
             max_position_embeddings=1024, tie_word_embeddings=False)
T5 = dict(architectures=["T5ForConditionalGeneration"], model_type="t5", d_model=256, d_kv=32, num_heads=8, d_ff=1024,
          num_layers=4, num_decoder_layers=4, vocab_size=4096, feed_forward_proj="gated-gelu", dropout_rate=0.1,
          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
MARK = "step-memory: "  # the result lines among what the trainers print
WORDS = "the cow says moo and the duck says quack while the dog runs to the barn".split()


def _hwm_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class Phases:
    """Peaks above the resident set at each mark."""

    def __init__(self) -> None:
        self.base = 0
        self.marks: list[int] = []  # the resident set at each mark
        self.peaks: dict[str, list[int]] = {}

    def mark(self) -> None:
        _hwm_reset()
        self.base = _status("VmRSS")
        self.marks.append(self.base)

    def close(self, name: str) -> None:
        self.peaks.setdefault(name, []).append(_status("VmHWM") - self.base)
        self.mark()


def _callback(phases: Phases):
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            phases.mark()

        def on_step_end(self, args, state, control, **kwargs):
            phases.close("step")

    return Measure()


def grpo_prompts(n: int) -> list[str]:
    return [f"Count the {WORDS[i % len(WORDS)]} please" for i in range(n)]


def _text(i: int, words: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))


def _llama_folder(folder: Path) -> Path:
    """A random Llama saved with the demo's tokenizer, loaded back as the runner loads models."""
    import torch
    import transformers

    from tuiwiz.demo.builtin import resolve_builtin

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{k: v for k, v in LLAMA.items() if k not in ("architectures", "model_type")},
                                      pad_token_id=3, bos_token_id=0, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    demo = resolve_builtin("demo", build=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (demo / name).exists():
            shutil.copy2(demo / name, folder / name)
    return folder


def _with_method(model, method: str, task_type: str):
    if method == "full":
        return model
    import peft

    from tuiwiz.train.fused_lora import fuse

    model = peft.get_peft_model(model, peft.LoraConfig(task_type=task_type, r=16, lora_alpha=32, lora_dropout=0.05,
                                                       target_modules="all-linear"))
    fuse(model)  # as the runner trains LoRA (train/modeling.py's fuse_lora)
    return model


def _common(out: Path, case: dict) -> dict:
    return dict(output_dir=str(out), per_device_train_batch_size=case["micro_batch"],
                gradient_accumulation_steps=case.get("accumulation", 1), max_steps=case["steps"], learning_rate=1e-5,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False,
                optim="adamw_torch", disable_tqdm=True, dataloader_num_workers=0, seed=0,
                gradient_checkpointing=False)  # TRL's configs default to True; the runner passes the profile's


def run_case(case: dict, work: Path) -> dict:
    import torch
    import transformers
    from datasets import Dataset

    torch.set_num_threads(1)
    from tuiwiz.train.modeling import Precision, cap_head_tiles

    cap_head_tiles(Precision("fp32", "cpu"))  # the runner's fused-head tile on the CPU
    phases = Phases()
    kind, T, B = case["kind"], case.get("seq_len", 0), case["micro_batch"]
    n_rows = B * case.get("accumulation", 1) * case["steps"] * 2
    result: dict = {"case": case}
    if kind == "seq2seq":
        config = transformers.T5Config(**{k: v for k, v in T5.items() if k not in ("architectures", "model_type")})
        torch.manual_seed(0)
        model = _with_method(transformers.T5ForConditionalGeneration(config), case["method"], "SEQ_2_SEQ_LM")
        g = torch.Generator().manual_seed(0)
        rows = [{"input_ids": torch.randint(2, config.vocab_size, (T,), generator=g).tolist(),
                 "attention_mask": [1] * T,
                 "labels": torch.randint(2, config.vocab_size, (case["target_len"],), generator=g).tolist()}
                for _ in range(n_rows)]
        rss = _status("VmRSS")
        trainer = transformers.Seq2SeqTrainer(
            model=model, args=transformers.Seq2SeqTrainingArguments(**_common(work / "out", case)),
            train_dataset=Dataset.from_list(rows), data_collator=transformers.default_data_collator,
            callbacks=[_callback(phases)])
    else:
        folder = work / "model"
        if not folder.exists():
            _llama_folder(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        loader = transformers.AutoModelForSequenceClassification if kind == "reward" \
            else transformers.AutoModelForCausalLM
        kwargs = {"num_labels": 1} if kind == "reward" else {}
        model = loader.from_pretrained(folder, dtype=torch.float32, **kwargs)
        model.config.pad_token_id = tokenizer.pad_token_id
        model = _with_method(model, case["method"], "SEQ_CLS" if kind == "reward" else "CAUSAL_LM")
        rss = _status("VmRSS")
        trainer = _trl_trainer(kind, case, model, tokenizer, work, phases, n_rows, result)
        reference = getattr(trainer, "ref_model", None)  # TRL's second copy, where it made one
        result["reference_bytes"] = sum(p.nbytes for p in reference.parameters()) if reference is not None else 0
    trainer.train()
    result.update(phases.peaks)
    # what stays resident once a step has run: the trainer's own (a reference model, optimizer states)
    result["resident"] = phases.marks[-1] - rss
    return result


def _trl_trainer(kind, case, model, tokenizer, work, phases, n_rows, result):
    from datasets import Dataset

    T, out = case.get("seq_len", 0), work / f"out-{kind}"
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        rows = [{"text": _text(i, T // 3)} for i in range(n_rows)]
        config = SFTConfig(**_common(out, case), max_length=T, pad_to_multiple_of=T, packing=False,
                           dataset_num_proc=None)
        return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          callbacks=[_callback(phases)])
    if kind in ("dpo", "reward"):
        rows = [{"prompt": _text(i, T // 8), "chosen": _text(i + 1, T // 6), "rejected": _text(i + 2, T // 6)}
                for i in range(n_rows)]
        if kind == "dpo":
            from trl import DPOConfig, DPOTrainer

            config = DPOConfig(**_common(out, case), max_length=T, pad_to_multiple_of=T, dataset_num_proc=None)
            return DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=[_callback(phases)])
        from trl import RewardConfig, RewardTrainer

        rows = [{"chosen": r["prompt"] + " " + r["chosen"], "rejected": r["prompt"] + " " + r["rejected"]}
                for r in rows]
        config = RewardConfig(**_common(out, case), max_length=T, pad_to_multiple_of=T, dataset_num_proc=None)
        return RewardTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[_callback(phases)])
    from trl import GRPOConfig, GRPOTrainer

    prompts = grpo_prompts(n_rows)
    result["prompt_len"] = max(len(tokenizer(p)["input_ids"]) for p in prompts)
    C = case["completion_len"]
    # every completion runs to max_completion_length, and samples only the tokenizer's ids (the model's
    # vocabulary is larger than the demo tokenizer's)
    generation = {"min_new_tokens": C, "suppress_tokens": list(range(len(tokenizer), LLAMA["vocab_size"]))}
    config = GRPOConfig(**_common(out, case), num_generations=case["num_generations"], max_completion_length=C,
                        generation_kwargs=generation, beta=case.get("beta", 0.0))
    trainer = GRPOTrainer(model=model, args=config, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
                          processing_class=tokenizer, callbacks=[_callback(phases)])
    generate = trainer._generate_and_score_completions

    def measured(*args, **kwargs):  # generation (and scoring) alone, then the forward/backward alone
        phases.mark()
        out = generate(*args, **kwargs)
        phases.close("generation")
        return out

    trainer._generate_and_score_completions = measured
    return trainer


def saved_in_block(model, block, **inputs) -> int:
    """A training forward of ``model`` on ``inputs`` in this process: the bytes of the tensors ``block`` saves for
    backward (parameters left out, a storage counted once), by torch.autograd.graph.saved_tensors_hooks."""
    import torch

    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inside = [False]
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if inside[0] and storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    hooks = [block.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True)),
             block.register_forward_hook(lambda *_: inside.__setitem__(0, False))]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    for hook in hooks:
        hook.remove()
    return sum(saved.values())


def measure(cases: list[dict], tmp_path: Path, timeout: int = 240) -> list[dict]:
    """Run ``cases`` in a fresh interpreter; their results in order."""
    import subprocess

    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TRL_EXPERIMENTAL_SILENCE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "tests.support.step_memory", str(spec)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [json.loads(line[len(MARK):]) for line in done.stdout.splitlines() if line.startswith(MARK)]


def main(argv: list[str]) -> int:
    cases = json.loads(Path(argv[0]).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            print(MARK + json.dumps(run_case(case, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
