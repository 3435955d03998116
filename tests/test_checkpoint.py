"""Checkpoints: atomic writes survive an interrupted save; load_model rebuilds from the file alone."""
import dataclasses

import pytest
import torch

import gcg.checkpoint as ckpt
from gcg.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, load_model,
                            save_checkpoint)
from gcg.diffusion import DiffusionConfig
from gcg.nn import MODEL_PRESETS, create_model


def payload(seed=0, preset="tiny"):
    torch.manual_seed(seed)
    model = create_model(MODEL_PRESETS[preset])
    ema = {k: v + 1.0 for k, v in model.state_dict().items()}  # distinguishable from the raw weights
    return {"model_config": MODEL_PRESETS[preset].to_dict(),
            "diffusion_config": DiffusionConfig(noise_schedule="cosine", steps=10, model_var_type="learned_range").to_dict(),
            "model": model.state_dict(), "ema": {0.999: ema}, "step": seed}


def test_roundtrip_and_load_model_uses_the_stored_configs(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", payload(3))
    assert load_checkpoint(path)["step"] == 3
    model, diffusion = load_model(path)
    assert not model.training and diffusion.num_timesteps == 10
    assert diffusion.model_var_type == "learned_range"
    stored = payload(3)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, stored["ema"][0.999][key], rtol=0, atol=0)
    raw, _ = load_model(path, use_ema=False)
    for key, value in raw.state_dict().items():
        torch.testing.assert_close(value, stored["model"][key], rtol=0, atol=0)
    with pytest.raises(KeyError, match="stored rates"):
        load_model(path, ema_rate=0.5)


def test_interrupted_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, payload(1))

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the temp file ...
        raise KeyboardInterrupt  # ... then the job is killed

    monkeypatch.setattr(ckpt.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, payload(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temp file is gone


def test_a_killed_writer_leaves_only_a_temp_file_that_is_ignored(tmp_path):
    save_checkpoint(ckpt.checkpoint_path(tmp_path, 10), payload(10))
    # kill -9 during a write: the temp file stays behind, the final name never appears
    (tmp_path / ".checkpoint_0000020.pt.tmp-999").write_bytes(b"truncated")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_0000010.pt"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 10


def test_unreadable_and_missing_files_give_clear_errors(tmp_path):
    bad = tmp_path / "checkpoint_0000005.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="unreadable.*truncated"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="python -m gcg.train"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a gcg training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_trainer_checkpoints_rotate_and_link_latest(tmp_path):
    from gcg.presets import apply_overrides, get_preset
    from gcg.train import train

    config = apply_overrides(get_preset("digits"), dict(
        model="tiny", batch_size=4, max_steps=3, save_every=1, keep_checkpoints=2, log_every=10,
        out_dir=str(tmp_path), sample_every=0, num_sample_images=2, sample_steps="ddim2"))
    result = train(config, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_0000002.pt", "checkpoint_0000003.pt"]
    latest = load_checkpoint(tmp_path / "checkpoint.pt")
    assert latest["step"] == 3 and set(latest) >= {"model", "ema", "optimizer", "scaler", "rng",
                                                   "train_config", "diffusion_config", "model_config"}
    assert latest["rng"]["per_rank"][0]["data_step"] == 3
    model, diffusion = load_model(tmp_path / "checkpoint.pt")
    x = torch.randn(2, 1, 8, 8)
    t, y = torch.tensor([0, 500]), torch.tensor([1, 10])  # 10 = the null label (p_uncond > 0)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y=y), result.ema.eval()(x, t, y=y))
    assert dataclasses.asdict(DiffusionConfig(**latest["diffusion_config"]))["noise_schedule"] == "cosine"
