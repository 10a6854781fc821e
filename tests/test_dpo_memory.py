"""DPO's memory on CPU: TRL's fused loss head scores 256 positions a tile instead of 4096, which is most of
what DPO's step peaked above SFT's (bench/preference_bench.py), and the loss does not change."""

import pytest

from tuiwiz.run.rundir import RunDir

pytestmark = pytest.mark.slow


def dpo_trainer(tmp_path):
    from tuiwiz.profile.schema import Profile
    from tuiwiz.train.recipes import recipe_for

    # padded to 64: 8 pairs score 16 x 63 positions, several tiles of 256
    profile = Profile(task="dpo", data={"path": "demo:preference", "max_length": 64, "limit": 8},
                      method={"type": "lora", "lora_dropout": 0.0}, output={"report_to": []},
                      training={"max_steps": 1, "per_device_train_batch_size": 8, "pad_to_max_length": True})
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    return recipe_for("dpo").set_up(profile, run, []).trainer


def test_dpo_on_cpu_scores_the_loss_head_in_small_tiles_with_the_same_loss(tmp_path, demo_built, monkeypatch):
    import torch
    from trl import DPOTrainer
    from trl.kernels import chunked_logprob

    from tuiwiz.train.modeling import CPU_HEAD_TILE_TOKENS

    monkeypatch.setattr(chunked_logprob, "TOKEN_CHUNK_SIZE", 4096)  # TRL's; put back after the test
    trainer = dpo_trainer(tmp_path)
    assert type(trainer) is DPOTrainer and trainer.ref_model is None  # one model: the adapter off is the reference
    assert chunked_logprob.TOKEN_CHUNK_SIZE == CPU_HEAD_TILE_TOKENS

    tiles = []
    fold = chunked_logprob._forward_tile

    def recording(tile, *args, **kwargs):
        tiles.append(tile.shape[0])
        return fold(tile, *args, **kwargs)

    monkeypatch.setattr(chunked_logprob, "_forward_tile", recording)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert batch["input_ids"].shape == (16, 64)
    trainer.model.train()
    capped = trainer.compute_loss(trainer.model, batch)
    capped.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert max(tiles) == CPU_HEAD_TILE_TOKENS and len(tiles) == 2 * 4  # policy and reference: 1008 positions each

    trainer.model.zero_grad()
    tiles.clear()
    monkeypatch.setattr(chunked_logprob, "TOKEN_CHUNK_SIZE", 4096)
    whole = trainer.compute_loss(trainer.model, batch)
    whole.backward()
    assert tiles == [16 * 63, 16 * 63]
    torch.testing.assert_close(capped, whole, rtol=1e-6, atol=1e-7)
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
