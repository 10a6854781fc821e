"""ONNX export of a classification run: torch.onnx's exporter, checked with onnxruntime, refused when wrong.

One MiniLM classification run is trained (a few steps through the real CLI) and merged once per
test session (the ``trained_run`` fixture); the exports reuse that verified merge, as they do for users.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tuiwiz.errors import UserError
from tuiwiz.run.rundir import RunDir

from .support.trained_runs import assert_streamed_equals_loaded, copy_run, merged_once, merged_tensors

pytestmark = pytest.mark.slow
LABELS = ["food", "sports", "tech", "weather"]
TEXTS = ["Grandma baked a lemon cake with fresh cream for dessert.", "Goal!",
         "The new phone ships with a faster chip and twice the memory."]


@pytest.fixture(scope="module")
def classifier_run(trained_run) -> RunDir:
    run = trained_run("minilm-classifier")
    merged_once(run)
    return run


@pytest.fixture(scope="module")
def onnx_folder(classifier_run, tmp_path_factory):
    for name in ("onnx", "onnxruntime", "onnxscript"):  # tuiwiz[onnx]; CI installs it with [all]
        pytest.importorskip(name)
    from tuiwiz.post.export import export_run

    out = tmp_path_factory.mktemp("onnx-export") / "onnx"
    result = export_run(str(classifier_run.path), "onnx", out)
    return out, result


def test_onnx_export_runs_in_onnxruntime_as_the_torch_model_does(classifier_run, onnx_folder):
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, result = onnx_folder
    assert {p.name for p in result.files} >= {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json",
                                              "README.md"}
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no staging or merge left behind
    note = next(n for n in result.notes if n.startswith("checked with onnxruntime"))
    assert float(re.search(r"within (\S+) of", note).group(1)) <= 1e-4
    assert any("verified merge" in n for n in result.notes)

    # As an onnxruntime user: only the export folder, its tokenizer and its config.
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(LABELS))] == LABELS
    tokenizer = AutoTokenizer.from_pretrained(out)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(isinstance(dim, str) for shape in inputs.values() for dim in shape)  # batch and sequence are free
    assert [o.name for o in session.get_outputs()] == ["logits"]
    encoded = tokenizer(TEXTS, return_tensors="np", padding=True)
    assert encoded["attention_mask"].min() == 0  # the batch really is padded
    ours = session.run(["logits"], {name: encoded[name].astype(np.int64) for name in inputs})[0]

    model = AutoModelForSequenceClassification.from_pretrained(classifier_run.path / "merged").eval()
    with torch.no_grad():
        theirs = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.numpy()
    assert ours.shape == (len(TEXTS), len(LABELS))
    assert np.abs(ours - theirs).max() <= 1e-4
    assert [LABELS[i] for i in ours.argmax(-1)] == [LABELS[i] for i in theirs.argmax(-1)]
    assert "ONNX" in (out / "README.md").read_text()


def test_an_onnx_file_that_differs_from_the_model_is_refused(classifier_run, onnx_folder, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    import tuiwiz.post.export_onnx
    from tuiwiz.post.export import export_run

    good, _ = onnx_folder

    def wrong_by_1e3(model, example, dest):  # the classifier's bias off by 1e-3: ten times the tolerance
        graph = onnx.load(str(good / "model.onnx"))
        bias = next(t for t in graph.graph.initializer if t.name.endswith("classifier.bias"))
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(1e-3), bias.name))
        onnx.save(graph, str(dest))

    monkeypatch.setattr(tuiwiz.post.export_onnx, "_write_onnx", wrong_by_1e3)
    with pytest.raises(UserError, match="does not match the torch model") as info:
        export_run(str(classifier_run.path), "onnx", tmp_path / "bad")
    assert info.value.kind == "verify" and "0.001" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


def test_language_models_and_missing_packages_are_refused(classifier_run, tmp_path, monkeypatch):
    import importlib.util

    from tuiwiz.post.export import export_run

    language_model = copy_run(classifier_run, tmp_path / "sft", task="sft")
    with pytest.raises(UserError, match="ONNX export is for classification runs"):
        export_run(str(language_model.path), "onnx", tmp_path / "o")

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else
                        find_spec(name, *a))
    with pytest.raises(UserError, match="onnxruntime") as info:
        export_run(str(classifier_run.path), "onnx", tmp_path / "o")
    assert info.value.kind == "dependency" and info.value.hint == "pip install 'tuiwiz[onnx]'"
    assert not (tmp_path / "o").exists()


def test_the_classifier_streams_from_disk_as_it_loads(classifier_run):
    """What merge verification runs: base + adapter, and the merged model, block by block from disk."""
    from tuiwiz.demo.builtin import resolve_builtin

    assert_streamed_equals_loaded(classifier_run, resolve_builtin("minilm"), adapter=True, random_head=True)
    assert_streamed_equals_loaded(classifier_run, classifier_run.path / "merged", adapter=False)


def test_the_classifier_merge_equals_peft_merge_and_unload(classifier_run):
    """The MiniLM run: LoRA on the encoder and a trained head (modules_to_save), merged shard by shard,
    equals peft's merge_and_unload tensor by tensor, under the base checkpoint's own names."""
    import torch
    from peft import AutoPeftModelForSequenceClassification

    ours = merged_tensors(classifier_run.path / "merged")
    model = AutoPeftModelForSequenceClassification.from_pretrained(classifier_run.output, num_labels=len(LABELS))
    reference = {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}
    prefix = "" if set(reference) <= set(ours) else "bert."  # MiniLM's checkpoint names drop the model prefix
    compared = 0
    for key, expected in reference.items():
        name = key if key in ours else key.removeprefix(prefix)
        assert name in ours, key
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-6, msg=key)
        compared += 1
    assert compared == len(reference) and "classifier.weight" in ours
    base_query = next(k for k in ours if k.endswith("layer.0.attention.self.query.weight"))
    from safetensors import safe_open

    from tuiwiz.demo.builtin import resolve_builtin

    base = next(resolve_builtin("minilm").glob("*.safetensors"))
    with safe_open(base, framework="pt") as handle:
        original = handle.get_tensor(next(k for k in handle.keys() if k.endswith(base_query.split("encoder.")[-1])))
    assert not torch.allclose(original, ours[base_query])  # the LoRA delta is in the merged weights
