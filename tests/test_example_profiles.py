"""The shipped profiles run as shipped: each validates through the real CLI, its header names the command
that runs it, the multi-process examples launch what they say, and the GPU examples' memory figures are
what tuiwiz's estimate says today.

The demo examples for several processes run on the CPU as gloo ranks. DDP and ZeRO-2 run here for real
(slow). ZeRO-3 with offload compiles DeepSpeed's CPU Adam into each test session's fresh cache (about
100 s on 2 cores, then 16 s a run) and tests/test_distributed.py trains it already
(test_deepspeed_zero3_with_cpu_offload), so here it is only validated and its launch printed. The two-node
example would wait for a machine at 10.0.0.1: its launch is printed, and test_distributed.py trains the
two-node path on localhost.
"""

import json
import re

import pytest
import yaml

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import read_state

from .support import PROFILES, ROOT
from .support.configs import load_config
from .support.processes import run_cli
from .support.runs import only_run, write_profile

EXAMPLES = sorted(p.name for p in PROFILES.glob("*.yaml"))
COMMAND = re.compile(r"Run it with: (tuiwiz --profile \S+.*?)\s*$")
ESTIMATE = re.compile(r"tuiwiz's memory estimate: (\d+\.\d) GiB per GPU")
# GPU examples whose header states the estimate, and the config (tests/fixtures/configs/) of their model:
# the Instruct models have the same shapes as the base models' configs.
GPU_EXAMPLES = {
    "llama3-8b-lora-80gb.yaml": "llama3-8b",
    "llama3-8b-full-zero3-8x80gb.yaml": "llama3-8b",
    "llama3-70b-qlora-80gb.yaml": "llama3-70b",
    "llama3-8b-qlora-24gb.yaml": "llama3-8b",  # Llama 3.1 8B: the same shapes as Llama 3 8B
    "qwen2.5-7b-lora-80gb.yaml": "qwen2.5-7b",
    "qwen2.5-0.5b-full-24gb.yaml": "qwen2.5-0.5b",
    "qwen2.5-7b-dpo-lora-80gb.yaml": "qwen2.5-7b",
    "qwen2.5-7b-grpo-lora-80gb.yaml": "qwen2.5-7b",
}


def header(name: str) -> list[str]:
    """The comment lines a profile opens with, without their '#'."""
    lines = []
    for line in (PROFILES / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return lines


def commands_named(name: str) -> list[str]:
    return [m.group(1) for line in header(name) if (m := COMMAND.search(line))]


def print_launch(name: str) -> tuple[list[str], dict, dict | None]:
    """`tuiwiz --profile profiles/NAME --print-launch` from the repository: the node commands, the
    accelerate config and the DeepSpeed JSON (None without ZeRO)."""
    out = run_cli("--profile", f"profiles/{name}", "--print-launch", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    nodes, _, rest = out.stdout.partition("\n# accelerate config written into the run folder (node 0):\n")
    accelerate, _, deepspeed = rest.partition("\n# deepspeed.json:\n")
    commands = [line for line in nodes.splitlines() if line and not line.startswith("# node ")]
    return commands, yaml.safe_load(accelerate), json.loads(deepspeed) if deepspeed else None


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_profile_validates_through_the_cli(name):
    result = run_cli("profile", "validate", f"profiles/{name}", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"profiles/{name}: valid" in result.stdout


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_profile_header_says_what_it_shows_and_names_the_one_command_that_runs_it(name):
    assert len(header(name)) >= 2, f"{name}: a header comment says what it shows, then how to run it"
    [command] = commands_named(name)
    assert command == f"tuiwiz --profile profiles/{name}" or command.startswith(f"tuiwiz --profile profiles/{name} ")


def test_the_two_node_example_prints_one_command_per_node():
    name = "demo-two-nodes.yaml"
    commands, accelerate, deepspeed = print_launch(name)
    assert commands == [f"tuiwiz --profile profiles/{name} --node-rank {rank}" for rank in (0, 1)]
    [named] = commands_named(name)  # the header's command, with N for each node's rank
    assert named.startswith(f"tuiwiz --profile profiles/{name} --node-rank N ")
    assert (accelerate["num_machines"], accelerate["machine_rank"], accelerate["num_processes"]) == (2, 0, 4)
    assert (accelerate["main_process_ip"], accelerate["main_process_port"]) == ("10.0.0.1", 29500)
    assert deepspeed is None  # DDP


@pytest.mark.parametrize("name,world_size,stage,offload", [
    ("demo-ddp-2proc.yaml", 2, None, False),
    ("demo-zero2.yaml", 2, 2, False),
    ("demo-zero3-offload.yaml", 2, 3, True),
    ("llama3-8b-full-zero3-8x80gb.yaml", 8, 3, False),
])
def test_the_multi_process_examples_launch_what_they_say(name, world_size, stage, offload):
    commands, accelerate, deepspeed = print_launch(name)
    assert commands == [f"tuiwiz --profile profiles/{name} --node-rank 0"]
    assert (accelerate["num_machines"], accelerate["num_processes"]) == (1, world_size)
    assert (deepspeed and deepspeed["zero_optimization"]["stage"]) == stage
    if stage:
        zero = deepspeed["zero_optimization"]
        assert ("offload_optimizer" in zero, "offload_param" in zero) == (offload, offload)


@pytest.mark.parametrize("name", GPU_EXAMPLES)
def test_the_gpu_examples_state_what_the_estimate_says_today(name):
    from tuiwiz.plan.memory import Plan, estimate
    from tuiwiz.plan.modelinfo import model_from_config
    from tuiwiz.profile.io import load_profile
    from tuiwiz.units import GIB, gib

    [stated] = [m.group(1) for line in header(name) if (m := ESTIMATE.search(line))]
    profile = load_profile(PROFILES / name).profile
    model = model_from_config(load_config(GPU_EXAMPLES[name]), GPU_EXAMPLES[name])
    dist = profile.distributed
    # no offload in these examples: ZeRO-3 with offload is a Plan strategy of its own (zero3_offload_*)
    assert not (dist.offload_optimizer or dist.offload_params)
    plan = Plan.from_profile(profile, model, device="cuda", bf16=True, strategy=dist.strategy)
    needed = estimate(model, plan, dist.world_size).total
    assert f"{stated} GiB" == gib(needed), f"{name}: the header says {stated} GiB, the estimate {gib(needed)}"
    card = int(re.search(r"(\d+)gb\.yaml$", name).group(1))  # the card the name promises, with 10% to spare
    assert needed < 0.9 * card * GIB, f"{name}: {gib(needed)} on a {card} GB card"


@pytest.mark.slow
@pytest.mark.parametrize("name,engine", [("demo-ddp-2proc.yaml", "DistributedDataParallel"),
                                         ("demo-zero2.yaml", "DeepSpeedEngine")])
def test_the_demo_examples_run_as_shipped(tmp_path, demo_built, name, engine):
    """Only their runs folder moved to tmp_path; about 10 to 30 s each on 2 cores."""
    profile = write_profile(tmp_path, name)
    result = run_cli("--profile", profile, timeout=600)
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert "completed: train loss" in result.stdout
    assert read_state(run).status == "completed"
    events = read_events(run.events)
    start = next(e for e in events if e["type"] == "run_start")
    assert start["world_size"] == 2
    assert next(e for e in events if e["type"] == "run_end")["engine"] == engine
    max_steps = yaml.safe_load((PROFILES / name).read_text())["training"]["max_steps"]
    assert max(e["step"] for e in events if e["type"] == "log") == max_steps
    for rank in (0, 1):
        assert json.loads((run.path / "logs" / f"rank{rank}.result.json").read_text())["status"] == "completed"
