"""The wizard's choices and how they become a profile. No Textual here.

The full-screen app and the plain prompts walk the same steps over a
``WizardState`` and build, check, save and launch the profile with the same
functions, so both produce the same profile and start the same runner.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from tuiwiz.data.datasets import DEFAULT_COLUMNS
from tuiwiz.data.datasets import FORMATS as FORMAT_NAMES
from tuiwiz.errors import UserError
from tuiwiz.tasks import TASK_NAMES
from tuiwiz.tasks import TASKS as TASK_TABLE

STEPS = ("hardware", "model", "data", "method", "settings", "review")
STEP_TITLES = {"hardware": "Hardware", "model": "Model", "data": "Data", "method": "Method",
               "settings": "Settings", "review": "Review"}
TASKS = TASK_NAMES
FORMATS = ("auto", *FORMAT_NAMES)
COLUMN_ROLES = tuple(DEFAULT_COLUMNS)
DEMO_DATA_FOR_TASK = {"sft": "demo:alpaca", "pretrain": "demo:text", "classification": "demo:classification",
                      "reward": "demo:preference", "dpo": "demo:preference", "kto": "demo:kto",
                      "orpo": "demo:preference", "simpo": "demo:preference", "grpo": "demo:arithmetic",
                      "seq2seq": "demo:seq2seq"}
# Tasks that usually follow an earlier run (DPO after SFT): the Data step offers completed runs to start from.
FOLLOW_UP_TASKS = ("reward", "dpo", "kto", "orpo", "simpo", "grpo")
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class WizardState:
    """What the user chose so far. Screens read and fill it in; nothing here is Textual."""

    workdir: Path = field(default_factory=Path.cwd)  # profiles/ and runs/ go here
    machine: object | None = None  # hardware.Machine
    model_name: str = "demo"
    model_info: object | None = None  # modelinfo.ModelInfo
    task: str = "sft"
    data_path: str = "demo:alpaca"
    data_format: str = "auto"
    columns: dict[str, str | None] = field(default_factory=dict)
    data: object | None = None  # data.LoadedData
    data_error: UserError | None = None
    length_stats: object | None = None  # rendering.LengthStats
    max_length: int | None = None  # the user's choice; None: the recommender's
    recommendation: object | None = None  # recommend.Recommendation
    option_key: str | None = None
    profile: object | None = None  # profile.Profile, from the settings step
    profile_name: str | None = None
    trust_remote_code: bool = False  # only after the user confirmed, on the Model step
    start_from: str | None = None  # an earlier run's folder this one trains on from (model.start_from)
    probe_first: bool = True  # the Review step runs the probe run as it opens, before Launch is allowed

    @property
    def profiles_dir(self) -> Path:
        return self.workdir / "profiles"

    def option(self):
        rec = self.recommendation
        if rec is None:
            return None
        return rec.option(self.option_key) if self.option_key else rec.best


def remote_code(folder) -> tuple[str, ...]:
    """The Python files a model folder asks transformers to run (config.json's auto_map), if any."""
    import json

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map:
        return ()
    modules = {str(ref).split("--")[-1].split(".")[0] for ref in auto_map.values() if isinstance(ref, str)}
    return tuple(sorted(f"{m}.py" for m in modules))


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class DataCheck:
    """A dataset read for the wizard: the records, token lengths, or the first problem."""

    data: object | None  # data.LoadedData
    stats: object | None  # rendering.LengthStats
    error: UserError | None
    note: str | None = None  # e.g. why there is no preview


def is_hub_dataset(path: str) -> bool:
    from tuiwiz.hub_access import is_hub_id
    from tuiwiz.profile.io import is_local_data

    return not path.startswith("demo:") and not is_local_data(path) and is_hub_id(path.partition(":")[0])


def column_map(columns: dict[str, str | None]):
    from tuiwiz.profile.schema import ColumnsConfig

    return ColumnsConfig(**{role: (columns.get(role) or None) for role in COLUMN_ROLES})


def check_data(state: WizardState, max_length: int = 512) -> DataCheck:
    """Read ``state.data_path`` as the runner will, and count tokens with the model's tokenizer."""
    from tuiwiz.data.datasets import load_dataset_file
    from tuiwiz.demo.build import resolve_demo_uri

    path = state.data_path.strip()
    if not path:
        return DataCheck(None, None, UserError("give a data file, a hub dataset id or demo:NAME", field="data.path",
                                               kind="data"))
    hub_note = None
    if is_hub_dataset(path):
        from tuiwiz.data.datasets import cached_hub_dataset_files

        name, _, split = path.partition(":")
        files = cached_hub_dataset_files(name, split or "train")
        if not files:
            return DataCheck(None, None, None, note=f"{path} is a hub dataset that is not in the Hugging Face cache: "
                                                    "the runner downloads and reads it, so there is no preview here")
        hub_note = (f"preview from the cached {files[0].name}" + (f" (1 of {len(files)} files)" if len(files) > 1
                    else "") + "; the runner reads the whole split through datasets")
    try:
        if hub_note:
            file = files[0]
        else:
            file = resolve_demo_uri(path) if path.startswith("demo:") else Path(path).expanduser()
        if not file.is_absolute():
            file = state.workdir / file
        loaded = load_dataset_file(file, format=state.data_format, columns=column_map(state.columns),
                                   task=state.task)
    except UserError as exc:
        return DataCheck(None, None, exc)
    stats = None
    note = hub_note
    folder = getattr(state.model_info, "path", None)
    if folder:
        from tuiwiz.data.rendering import ModelText, length_stats

        try:
            stats = length_stats(loaded.records, loaded.format, ModelText(folder), max_length)
        except UserError as exc:
            note = f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")
        except Exception as exc:  # a chat template that fails on this data is the user's to see
            note = f"cannot render the examples with this model's template: {exc}"
    return DataCheck(loaded, stats, None, note)


def data_stats(state: WizardState):
    """DataStats for the recommender: the measured lengths, or the user's max length as given."""
    from dataclasses import replace

    from tuiwiz.data.stats import DataStats

    stats = state.length_stats
    if state.max_length:  # the size of the data still sets the epochs
        assumed = DataStats.assumed(state.max_length)
        return replace(assumed, rows=stats.rows) if stats is not None else assumed
    if stats is None or not stats.lengths:
        return None
    # the lengths may be a sample of a larger set: the row count is the whole set's
    return replace(DataStats.from_lengths(stats.lengths, source=state.data_path), rows=stats.rows)


def suggested_max_length(state: WizardState) -> int:
    """The max length the recommender would choose for this data and model."""
    if state.model_info is None:
        return 512
    from tuiwiz.plan.recommend import choose_seq_len

    stats = state.length_stats
    ds = None
    if stats is not None and stats.lengths:
        from tuiwiz.data.stats import DataStats

        ds = DataStats.from_lengths(stats.lengths)
    return choose_seq_len(ds, state.model_info)[0]


@dataclass(frozen=True)
class StartChoice:
    """A completed run the next task may start from."""

    path: str
    label: str
    task: str


def start_candidates(state: WizardState) -> list[StartChoice]:
    """Completed runs of the chosen model whose output a later causal-LM task can load (not virtual tokens),
    newest first: an SFT run before DPO, say."""
    from tuiwiz.run.outputs import earlier_output
    from tuiwiz.run.rundir import registered_runs, summarize

    found = []
    for summary in sorted(map(summarize, registered_runs()), key=lambda s: s.started or 0, reverse=True):
        if summary.status != "completed" or summary.model != state.model_name:
            continue
        if TASK_TABLE.get(summary.task or "sft", TASK_TABLE["sft"]).model != "causal":
            continue
        try:
            earlier_output(summary.path)
        except UserError:
            continue
        found.append(StartChoice(summary.path, f"{summary.run_id} ({summary.task}, {summary.method})",
                                 summary.task or "sft"))
    return found


def default_start(state: WizardState, candidates: list[StartChoice]) -> str | None:
    """The run a follow-up task starts from unless the user says otherwise: the newest SFT run."""
    if state.task not in FOLLOW_UP_TASKS:
        return None
    return next((c.path for c in candidates if c.task == "sft"), None)


# ---------------------------------------------------------------- method and profile


def recommend_for(state: WizardState):
    from tuiwiz.plan.recommend import recommend

    return recommend(state.machine, state.model_info, data_stats(state), state.task)


def draft_profile(state: WizardState):
    """The profile for the chosen option, with the data choices of the data step."""
    from tuiwiz.plan.recommend import to_profile
    from tuiwiz.profile.schema import ColumnsConfig, OutputConfig

    option = state.option()
    if option is None:
        raise UserError("no method chosen", hint="pick one on the Method step", kind="input")
    profile = to_profile(option, state.model_name, state.data_path, state.task)
    fmt = state.data_format
    if fmt == "auto" and state.data is not None:
        fmt = state.data.format
    columns = {k: v for k, v in state.columns.items() if v}
    data = profile.data.model_copy(update={
        "format": fmt, "columns": ColumnsConfig(**columns),
        "max_length": state.max_length or profile.data.max_length,
    })
    # Saved under profiles/, so runs land in the working folder's runs/.
    output = OutputConfig(runs_dir="../runs")
    model = profile.model.model_copy(update={"trust_remote_code": state.trust_remote_code,
                                             "start_from": state.start_from})
    return profile.model_copy(update={"model": model, "data": data, "output": output})


def default_profile_name(state: WizardState, profile) -> str:
    model = Path(state.model_name.rstrip("/")).name or "model"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{profile.method.type}").strip("-.") or "profile"
    stem = stem[:56]
    name, n = stem, 2
    while (state.profiles_dir / f"{name}.yaml").exists():
        name, n = f"{stem}-{n}", n + 1
    return name


# ---------------------------------------------------------------- the settings form


@dataclass(frozen=True)
class FormField:
    key: str  # dotted profile path, e.g. training.learning_rate
    label: str
    kind: str  # text / choice / flag
    choices: tuple[str, ...] = ()
    advanced: bool = False
    help: str = ""

    @property
    def widget_id(self) -> str:
        return "f-" + self.key.replace(".", "-").replace("_", "-")


_BASIC = (
    ("training.num_train_epochs", "Epochs"),
    ("training.max_steps", "Max steps"),
    ("training.learning_rate", "Learning rate"),
    ("training.per_device_train_batch_size", "Micro-batch"),
    ("training.gradient_accumulation_steps", "Grad. accumulation"),
    ("data.max_length", "Max length"),
)
_ADVANCED = (
    "data.validation_split", "training.eval_steps", "training.lr_scheduler_type", "training.warmup_steps",
    "training.weight_decay", "training.max_grad_norm", "training.precision", "training.gradient_checkpointing",
    "training.optim", "training.logging_steps", "training.save_steps", "training.save_total_limit",
    "training.seed", "data.packing", "data.limit", "model.dtype", "model.attn_implementation",
)


def _field_info(profile, key: str):
    section, name = key.split(".", 1)
    model = getattr(profile, section)
    return type(model).model_fields[name]


def _kind(annotation) -> tuple[str, tuple[str, ...]]:
    if annotation is bool:
        return "flag", ()
    if typing.get_origin(annotation) is typing.Literal:
        return "choice", tuple(str(a) for a in typing.get_args(annotation))
    return "text", ()


def form_fields(profile) -> tuple[FormField, ...]:
    """The settings form for this profile: common fields, the method's own, then the advanced ones."""
    out = []
    for key, label in _BASIC:
        info = _field_info(profile, key)
        out.append(FormField(key, label, "text", help=info.description or ""))
    method_cls = type(profile.method)
    for name, info in method_cls.model_fields.items():
        kind, choices = _kind(info.annotation)
        if name == "type" or (kind == "text" and info.annotation not in (int, float, int | None, float | None)):
            continue  # lists and free-form module names stay in the YAML
        out.append(FormField(f"method.{name}", name, kind, choices, help=info.description or ""))
    for key in _ADVANCED:
        info = _field_info(profile, key)
        kind, choices = _kind(info.annotation)
        out.append(FormField(key, key.split(".", 1)[1], kind, choices, advanced=True, help=info.description or ""))
    return tuple(out)


def _get(data: dict, key: str):
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def form_values(profile, fields: tuple[FormField, ...]) -> dict[str, object]:
    """The profile's current values for the form: text as strings, flags as bools."""
    data = profile.model_dump(mode="json")
    values = {}
    for f in fields:
        value = _get(data, f.key)
        if f.kind == "flag":
            values[f.key] = bool(value)
        else:
            values[f.key] = "" if value is None else str(value)
    return values


def _parse_scalar(text: str):
    """A form entry as YAML would read it: 3 -> int, 2e-4 -> float, empty -> None."""
    import yaml

    text = text.strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)  # YAML 1.1 reads 2e-4 (no dot) as text; people mean a number
    return value


def profile_from_form(base, values: dict[str, object]):
    """``base`` with the form's values, validated by the profile schema. Raises UserError naming the field."""
    import yaml

    from tuiwiz.profile.io import parse_profile_text

    data = base.model_dump(mode="json", exclude_none=True)
    for key, raw in values.items():
        value = raw if isinstance(raw, bool) else _parse_scalar(str(raw))
        *parents, name = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(name, None)
        else:
            node[name] = value
    return parse_profile_text(yaml.safe_dump(data, sort_keys=False), file="settings")


def check_profile_name(name: str) -> str | None:
    """Why ``name`` cannot be a profile file name, or None."""
    if not PROFILE_NAME.match(name or ""):
        return "letters, digits, '.', '_' and '-', starting with a letter or digit (at most 64)"
    return None


# ---------------------------------------------------------------- review and launch


def profile_path(state: WizardState, name: str) -> Path:
    return state.profiles_dir / f"{name}.yaml"


def relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def headless_command(state: WizardState, name: str) -> str:
    return f"tuiwiz --profile {relative(profile_path(state, name), state.workdir)}"


def node_commands_for(state: WizardState, name: str, profile) -> list[str] | None:
    """The command for every node of a multi-node profile, rank 0 first (what `--print-launch` prints);
    None for one machine, where ``headless_command`` is the whole story."""
    if profile is None or profile.distributed.nodes.count < 2:
        return None
    from tuiwiz.run.distributed import node_commands

    return node_commands(profile, relative(profile_path(state, name), state.workdir))


def save_and_launch(state: WizardState, profile, name: str):
    """Save the profile under profiles/, make its run dir and start the runner. Returns (run, proc, path)."""
    from tuiwiz.profile.io import load_profile, save_profile
    from tuiwiz.run.launch import create_run, start_runner

    problem = check_profile_name(name)
    if problem:
        raise UserError(f"profile name '{name}': {problem}", field="name", kind="input")
    path = profile_path(state, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_profile(profile, path)
    run = create_run(load_profile(path))
    proc = start_runner(run)
    return run, proc, path


def ensure_demo_model_subprocess(timeout: float = 300) -> None:
    """Build the demo model in a child process: building it imports torch, which this process never does."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "tuiwiz", "demo"], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise UserError("building the demo model failed: " + " / ".join(tail), kind="model",
                        hint="run `tuiwiz demo` to see the whole error")
