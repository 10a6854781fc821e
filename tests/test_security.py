"""Security: remote code, tokens, subprocesses, unpickling, YAML, and where a profile can make tuiwiz write.

- ``model.trust_remote_code`` is false unless the profile sets it; the frozen profile says so and the
  runner passes exactly that to transformers. No call in the package passes a literal True.
- Tokens in the environment (HF_TOKEN, WANDB_API_KEY, ...) are never written: a real short training
  run is searched, every file of its run dir and of the state dir, for their values. A profile that
  holds a token is refused, without echoing it.
- Subprocesses take argument lists: no ``shell=True``, ``os.system`` or ``os.popen`` in the package.
- Weights are written as safetensors; the package calls ``torch.load`` only with ``weights_only=True``.
  Resuming, transformers 5.x's Trainer loads the checkpoint's own pickles (``optimizer.pt``,
  ``scheduler.pt``, ``rng_state.pth``, ``scaler.pt``) with ``torch.load(weights_only=True)``, after
  ``check_torch_load_is_safe()`` (which refuses torch < 2.6, CVE-2025-32434); the RNG state is read
  inside ``safe_globals()``, which allowlists numpy's ``_reconstruct``, ``ndarray`` and ``dtype`` for
  numpy's generator state. So a tampered checkpoint cannot run arbitrary code through pickle, with the
  residual risk in torch's restricted unpickler and those numpy reconstructors. ``training_args.bin``
  (a full pickle of TrainingArguments that Trainer writes beside every checkpoint and output) is never
  loaded by tuiwiz, and transformers only loads it in its own scripts. A model folder with .bin weights
  and no safetensors is loaded by transformers' ``load_state_dict``, whose ``weights_only`` defaults to
  True. The installed transformers and peft are checked for all of this below, so an upgrade that
  regresses fails here.
- Profiles are parsed with PyYAML's SafeLoader and every non-plain tag is refused before construction.
- A run is written only inside ``output.runs_dir``/<run id>: ``output.run_name`` cannot hold a path.
  ``output.runs_dir`` itself is the user's own choice, like any output path of a program they run
  (the shipped profiles use ``../runs``); tuiwiz resolves it against the profile's folder.
"""

from __future__ import annotations

import ast
import inspect
import os
import secrets
from pathlib import Path

import pytest
import yaml

from tuiwiz.errors import UserError
from tuiwiz.profile.io import load_profile, parse_profile_text
from tuiwiz.profile.schema import Profile

from .support import ROOT
from .support.processes import run_cli
from .support.runs import only_run, shipped_profiles, write_profile

PACKAGE = ROOT / "tuiwiz"
SITE = Path(yaml.__file__).resolve().parent.parent  # site-packages


def package_sources() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"), str(path))) for path in sorted(PACKAGE.rglob("*.py"))]


def _dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    return ""


def calls(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, _dotted_name(node.func)


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


# --- remote code ------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_the_profile_sets_it(tmp_path):
    assert Profile().model.trust_remote_code is False
    for path, profile in shipped_profiles():
        assert profile.model.trust_remote_code is False, path
        assert profile.grpo.trust_reward_code is False or profile.task != "grpo", path
    # The frozen copy in a run dir says so explicitly.
    from tuiwiz.demo.build import ensure_demo_dataset
    from tuiwiz.run.launch import create_run

    ensure_demo_dataset("alpaca")
    run = create_run(load_profile(write_profile(tmp_path, "quickstart.yaml")))
    frozen = yaml.safe_load(run.profile.read_text())
    assert frozen["model"]["trust_remote_code"] is False
    assert load_profile(run.profile).profile.model.trust_remote_code is False


@pytest.mark.parametrize("setting", [False, True])
def test_the_runner_passes_the_profiles_setting_to_transformers(monkeypatch, setting):
    import transformers

    from tuiwiz.train import modeling

    seen = {}

    class Captured(Exception):
        pass

    def capture(name):
        def from_pretrained(*args, **kwargs):
            seen[name] = kwargs.get("trust_remote_code")
            raise Captured  # enough: nothing is loaded

        return from_pretrained

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", capture("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", capture("causal"))
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", capture("classifier"))
    profile = Profile.model_validate({"model": {"trust_remote_code": setting}})
    precision = modeling.Precision("fp32", "cpu")
    for call in (lambda: modeling.load_tokenizer("m", profile),
                 lambda: modeling.load_model("m", profile, precision, None),
                 lambda: modeling.load_model("m", profile.model_copy(update={"task": "classification"}),
                                             precision, ("a", "b"))):
        with pytest.raises(Captured):
            call()
    assert seen == {"tokenizer": setting, "causal": setting, "classifier": setting}


def test_no_literal_trust_remote_code_true_in_the_package():
    offenders = []
    for path, tree in package_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and is_true(node.value):
                offenders.append(f"{path}:{node.value.lineno}")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and is_true(value):
                        offenders.append(f"{path}:{key.lineno}")
    assert not offenders


# --- tokens -------------------------------------------------------------------------------

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY")


@pytest.mark.slow
def test_tokens_in_the_environment_are_never_written(tmp_path):
    tokens = {name: f"hf_{secrets.token_hex(17)}" if "HF" in name or "HUGGING" in name else secrets.token_hex(20)
              for name in TOKEN_VARIABLES}
    profile = write_profile(tmp_path, "quickstart.yaml", training__max_steps=5, training__save_steps=5,
                            training__logging_steps=1)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_cli("--profile", profile, cwd=cwd, env=tokens)
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert run.last_checkpoint() is not None  # the pickled training_args.bin and optimizer.pt are searched too

    searched = [p for root in (run.path, Path(os.environ["TUIWIZ_STATE_DIR"])) for p in root.rglob("*")
                if p.is_file()]
    assert len(searched) > 10 and any(p.name == "training_args.bin" for p in searched)
    for path in searched:
        content = path.read_bytes()
        for name, value in tokens.items():
            assert value.encode() not in content, f"{name} written to {path}"
    for value in tokens.values():
        assert value not in result.stdout + result.stderr

    # Nothing outside the run dir: the working directory stays empty, tmp_path holds the profile and runs/.
    assert not any(cwd.iterdir())
    assert {p.name for p in tmp_path.iterdir()} == {"quickstart.yaml", "runs", "cwd"}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.run_id]

    # Weights are safetensors; the only pickle in the output is the TrainingArguments tuiwiz never loads.
    output = {p.name for p in run.output.iterdir()}
    assert "adapter_model.safetensors" in output
    assert {n for n in output if n.endswith((".bin", ".pt", ".pth", ".pkl"))} == {"training_args.bin"}


HF = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"
SECRETS_IN_PROFILES = [
    # (profile text, field named, the secret that must not be echoed)
    (f"model:\n  hf_token: {HF}\n", "model.hf_token", HF),
    ("training:\n  wandb_api_key: 0123456789abcdef\n", "training.wandb_api_key", "0123456789abcdef"),
    ("output:\n  password: hunter2\n", "output.password", "hunter2"),
    ("data:\n  columns:\n    aws_access_key: wJalrXUtnFEMI\n", "data.columns.aws_access_key", "wJalrXUtnFEMI"),
    (f"model:\n  name_or_path: {HF}\n", "model.name_or_path", HF),
    (f"data:\n  path: https://user:{HF}@huggingface.co/d.jsonl\n", "data.path", HF),
    ("model:\n  revision: ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n", "model.revision",
     "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    ("model:\n  revision: github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz\n", "model.revision",
     "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
    ("data:\n  path: s3://AKIAIOSFODNN7EXAMPLE@bucket/x.jsonl\n", "data.path", "AKIAIOSFODNN7EXAMPLE"),
    ("model:\n  revision: sk-proj-" + "a1B2c3D4e5" * 5 + "\n", "model.revision", "a1B2c3D4e5" * 5),
    (f"data:\n  columns:\n    text: [{HF}]\n", "data.columns.text", HF),
]


@pytest.mark.parametrize("text,field,secret", SECRETS_IN_PROFILES)
def test_a_profile_holding_a_token_is_refused_without_echoing_it(text, field, secret):
    with pytest.raises(UserError) as info:
        parse_profile_text(text, file="p.yaml")
    error = info.value
    assert error.field == field and error.line is not None
    assert "HF_TOKEN" in error.hint
    assert secret not in str(error)


@pytest.mark.parametrize("text", [
    "model:\n  revision: 5f2c1d3e4b6a7980c1d2e3f4a5b6c7d8e9f0a1b2\n",  # a 40-hex commit is not a token
    "model:\n  name_or_path: someone/sk-llama-finetuned-v2\n",
    "output:\n  run_name: task-classification-run\n",
    "data:\n  path: hf_datasets/train.jsonl\n",
    "data:\n  columns:\n    text: tokens\n",  # a column called tokens is fine; a key called token is not
])
def test_look_alikes_are_not_refused(text):
    parse_profile_text(text, file="p.yaml")


def test_cli_refuses_a_token_without_printing_it(tmp_path):
    token = f"hf_{secrets.token_hex(17)}"
    profile = tmp_path / "p.yaml"
    profile.write_text(f"model:\n  name_or_path: demo\n  revision: {token}\noutput:\n  runs_dir: runs\n")
    for args in (("profile", "validate", profile), ("--profile", profile)):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and "looks like an access token" in result.stderr
        assert token not in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()


# --- subprocesses ---------------------------------------------------------------------------


def test_subprocesses_take_argument_lists_never_a_shell():
    offenders = []
    for path, tree in package_sources():
        for call, name in calls(tree):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if name in ("os.system", "os.popen", "os.spawnlp", "pty.spawn", "commands.getoutput"):
                offenders.append(f"{where} {name}")
            if is_true(keyword(call, "shell")):
                offenders.append(f"{where} shell=True")
            if name.startswith("subprocess."):
                first = call.args[0] if call.args else keyword(call, "args")
                if isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                    offenders.append(f"{where} {name} with a command string")
        for node in ast.walk(tree):  # every call goes through the subprocess module, so the check sees it
            if isinstance(node, ast.ImportFrom) and node.module == "subprocess":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} from subprocess import")
    assert not offenders
    # The check sees the launcher's real call.
    launch = next(tree for path, tree in package_sources() if path.name == "launch.py")
    assert any(name == "subprocess.Popen" for _, name in calls(launch))


# --- unpickling -----------------------------------------------------------------------------


def test_the_package_loads_no_pickle_but_torch_load_with_weights_only():
    offenders = []
    for path, tree in package_sources():
        for call, name in calls(tree):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if name in ("torch.load", "torch.serialization.load"):
                if not is_true(keyword(call, "weights_only")):
                    offenders.append(f"{where} torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load", "numpy.load", "np.load"):
                if name.endswith("np.load") or name.endswith("numpy.load"):
                    if is_true(keyword(call, "allow_pickle")):
                        offenders.append(f"{where} {name}(allow_pickle=True)")
                else:
                    offenders.append(f"{where} {name}")
            if keyword(call, "use_safetensors") is not None and not is_true(keyword(call, "use_safetensors")):
                offenders.append(f"{where} use_safetensors not True")
    assert not offenders


def test_installed_transformers_trainer_loads_checkpoints_with_weights_only():
    """Every torch.load in transformers' Trainer (resume: optimizer, scheduler, scaler, RNG) has weights_only=True."""
    import transformers.trainer as trainer_module
    from peft.utils import save_and_load
    from transformers.modeling_utils import load_state_dict

    tree = ast.parse(inspect.getsource(trainer_module))
    loads = [call for call, name in calls(tree) if name == "torch.load"]
    assert len(loads) >= 5  # rng state, optimizer, scheduler, scaler, best model
    assert all(is_true(keyword(call, "weights_only")) for call in loads), [c.lineno for c in loads]
    source = inspect.getsource(trainer_module.Trainer._load_rng_state)
    assert "safe_globals()" in source and "check_torch_load_is_safe()" in source
    assert inspect.signature(load_state_dict).parameters["weights_only"].default is True
    assert inspect.signature(save_and_load.torch_load).parameters["weights_only"].default is True


# --- YAML --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/module:os",
])
def test_python_tags_are_refused_before_anything_runs(tmp_path, tag):
    marker = tmp_path / "PWNED"
    text = f"model:\n  name_or_path: {tag.format(marker=marker)}\n"
    with pytest.raises(UserError) as info:
        parse_profile_text(text, file="p.yaml")
    assert "is not allowed: a profile holds plain values" in info.value.message
    assert info.value.line == 2 and info.value.field == "model.name_or_path"
    assert not marker.exists()


def test_the_package_parses_yaml_only_safely():
    offenders = []
    for path, tree in package_sources():
        for call, name in calls(tree):
            if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
                loader = keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
                if loader is None or "Safe" not in ast.unparse(loader):
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
        text = path.read_text(encoding="utf-8")
        for bad in ("yaml.Loader", "yaml.FullLoader", "yaml.UnsafeLoader", "yaml.CLoader", "yaml.CFullLoader"):
            if bad in text:
                offenders.append(f"{path.relative_to(ROOT)} {bad}")
    assert not offenders


# --- where a profile can make tuiwiz write ------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "..", "/etc/cron.d/x", "a/b", "a\\b", ".hidden", "~root", "x" * 65, "-rf"])
def test_run_name_cannot_hold_a_path(name):
    with pytest.raises(UserError) as info:
        parse_profile_text(yaml.safe_dump({"output": {"run_name": name}}), file="p.yaml")
    assert info.value.field == "output.run_name"


@pytest.mark.parametrize("stem", ["..", "...", "-x", "a b", "name.with.dots", "ünï"])
def test_runs_land_inside_runs_dir_whatever_the_profile_is_called(tmp_path, stem):
    from tuiwiz.demo.build import ensure_demo_dataset
    from tuiwiz.run.launch import create_run

    ensure_demo_dataset("alpaca")
    folder = tmp_path / "profiles"
    folder.mkdir()
    profile = folder / f"{stem}.yaml"
    profile.write_text("model:\n  name_or_path: demo\ndata:\n  path: demo:alpaca\noutput:\n  runs_dir: ../runs\n")
    run = create_run(load_profile(profile))
    assert run.path.parent == (tmp_path / "runs").resolve()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run.run_id]
