"""Where a run's model comes from: the profile's model, or an earlier run's output (``model.start_from``).

An earlier run's whole model (full fine-tuning, BitFit) loads as it is. Its adapter is merged into its
base once, into the run's ``start-model/`` folder, which this run then loads like any model folder: a
new adapter goes on top of the merged weights, QLoRA quantizes them, and under adapters the reference
model of DPO or KTO (the base with the new adapter disabled) is the earlier run's model, not the
original base. Virtual tokens (prompt tuning and its kin) cannot be merged, so nothing starts from them.
"""

from __future__ import annotations

from pathlib import Path

from tuiwiz.files import staged_folder
from tuiwiz.profile.schema import Profile
from tuiwiz.run.outputs import TOKENIZER_FILES, RunOutput, earlier_output
from tuiwiz.run.rundir import RunDir
from tuiwiz.tasks import TASKS
from tuiwiz.train.modeling import model_location

START_MODEL = "start-model"


def starting_model(profile: Profile, run: RunDir) -> str:
    """The folder or hub id this run loads its model from."""
    if profile.model.start_from is None:
        return model_location(profile)
    output = earlier_output(profile.model.start_from)
    if output.kind == "full":
        return str(output.path)
    target = run.path / START_MODEL
    if not (target / ".complete").exists():  # a resumed run merged it already
        _merge_into(output, target)
    return str(target)


def _merge_into(output: RunOutput, target: Path) -> None:
    """The earlier adapter folded into its base, saved as a model folder with its tokenizer."""
    import shutil

    import torch
    import transformers
    from peft import PeftModel

    loader = {"causal": transformers.AutoModelForCausalLM, "seq2seq": transformers.AutoModelForSeq2SeqLM,
              "sequence_score": transformers.AutoModelForSequenceClassification}[TASKS[output.task].model]
    dtype = torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    model = loader.from_pretrained(str(output.base_model), dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(output.path)).merge_and_unload()
    with staged_folder(target) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (output.path / name).exists():
                shutil.copy2(output.path / name, staging / name)
        (staging / ".complete").write_text(f"merged from {output.run.run_id}\n", encoding="utf-8")
