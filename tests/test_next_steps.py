"""What a finished run offers next follows its task: chat for language models, score for reward models,
text to text for seq2seq, ONNX for classifiers; merge only for adapters."""

import pytest

from tuiwiz.run.next_steps import next_commands
from tuiwiz.run.rundir import RunDir

from .support.testing import write_fixture_run


def _run(tmp_path, task: str, method: str = "lora") -> RunDir:
    path = write_fixture_run(tmp_path, run_id=f"r-{task}-{method}", register=False)
    (path / "profile.yaml").write_text(f"version: 1\ntask: {task}\nmethod:\n  type: {method}\n")
    return RunDir(path)


@pytest.mark.parametrize("task, method, wanted, unwanted", [
    ("dpo", "lora", ["tuiwiz chat r-dpo-lora", "tuiwiz merge r-dpo-lora", "--format gguf"], ["score"]),
    ("reward", "lora", ["tuiwiz score r-reward-lora --prompt", "type: reward_model, path:",
                        "tuiwiz merge r-reward-lora"], ["chat", "gguf"]),
    ("reward", "full", ["tuiwiz score r-reward-full"], ["merge", "chat"]),
    ("seq2seq", "lora", ["tuiwiz chat r-seq2seq-lora", "tuiwiz merge r-seq2seq-lora"], ["gguf", "score"]),
    ("classification", "lora", ["--format onnx"], ["chat", "merge", "score"]),
])
def test_next_commands_follow_the_task(tmp_path, task, method, wanted, unwanted):
    lines = "\n".join(f"{what}: {command}" for what, command in next_commands(_run(tmp_path, task, method),
                                                                               "completed"))
    for text in wanted:
        assert text in lines, lines
    for text in unwanted:
        assert text not in lines, lines


def test_a_stage_of_a_pipeline_points_at_the_pipeline(tmp_path):
    from tuiwiz.run.pipeline import PipelineDir, PipelineState, StageState

    folder = tmp_path / "p-1"
    first = write_fixture_run(folder, run_id="p-1-sft", register=False)
    stopped = write_fixture_run(folder, run_id="p-1-dpo", status="stopped", register=False)
    PipelineDir(folder).write(PipelineState("p-1", "stopped", [
        StageState("sft", "sft", str(first), "completed"), StageState("dpo", "dpo", str(stopped), "stopped"),
        StageState("grpo", "grpo")]))
    done = dict((command, what) for what, command in next_commands(RunDir(first), "completed"))
    assert done["tuiwiz attach p-1"] == "follow the pipeline's next stage (dpo)"
    halted = dict((command, what) for what, command in next_commands(RunDir(stopped), "stopped"))
    assert halted["tuiwiz resume p-1"] == "go on with the whole pipeline from this stage"
    alone = write_fixture_run(tmp_path, run_id="alone", register=False)
    assert not any("attach" in command for _, command in next_commands(RunDir(alone), "completed"))
