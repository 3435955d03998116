"""Checkpoints: atomic writes survive an interrupted save; load_model rebuilds from the file alone;
files load with weights_only=True and are verified (SHA-256, finite weights); EMA-only exports."""
import copy
import dataclasses
import datetime
import json

import numpy as np
import pytest
import torch

import gcg.checkpoint as ckpt
from gcg.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                            load_model, remove_stale_temp_files, save_checkpoint)
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
    good = save_checkpoint(tmp_path / "good.pt", payload(1)).read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match="unreadable.*truncated") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)
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


def trained_checkpoint(tmp_path, **overrides):
    """A 3-step digits run (tiny network) into tmp_path/run; returns its checkpoint.pt."""
    from gcg.presets import apply_overrides, get_preset
    from gcg.train import train

    config = apply_overrides(get_preset("digits"), dict(
        model="tiny", batch_size=4, max_steps=3, log_every=10, out_dir=str(tmp_path / "run"),
        sample_every=0, num_sample_images=2, sample_steps="ddim2", **overrides))
    train(config, progress=False)
    return tmp_path / "run" / "checkpoint.pt"


def test_trainer_checkpoints_load_with_weights_only_true(tmp_path):
    path = trained_checkpoint(tmp_path, schedule_sampler="loss-second-moment")
    raw = torch.load(path, weights_only=True)  # no pickled objects: numpy's RNG state is a tensor
    numpy_state = raw["rng"]["per_rank"][0]["numpy"]
    assert isinstance(numpy_state["keys"], torch.Tensor) and numpy_state["keys"].shape == (624,)
    assert raw["format"] == "gcg-checkpoint" and raw["format_version"] == 2
    assert raw["train_config"]["model"] == "tiny" and "loss_history" in raw["schedule_sampler"]
    assert set(raw["integrity"]["tensors"]) >= {f"ema/0.999/{k}" for k in raw["ema"][0.999]}


def test_save_refuses_values_that_need_unpickling(tmp_path):
    with pytest.raises(TypeError, match=r"payload/rng/numpy/1 is a numpy.ndarray"):
        save_checkpoint(tmp_path / "c.pt", {**payload(), "rng": {"numpy": np.random.get_state()}})
    assert not list(tmp_path.iterdir())


def overwrite_inside(path, tensor, data=b"\x00\x00\xc0\x7f"):
    """Overwrite 4 bytes (default: a float32 NaN) in the middle of `tensor`'s data inside the file."""
    blob = bytearray(path.read_bytes())
    at = blob.find(tensor.numpy().tobytes())
    assert at >= 0 and blob.find(tensor.numpy().tobytes(), at + 1) < 0  # found once
    middle = at + 4 * (tensor.numel() // 2)
    blob[middle:middle + 4] = data
    path.write_bytes(bytes(blob))


def test_four_overwritten_bytes_are_caught_by_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", payload(3))
    name = "input_conv.weight"
    overwrite_inside(path, payload(3)["ema"][0.999][name])
    unchecked = load_checkpoint(path, verify=False)  # what torch.load alone returns: one NaN weight
    assert torch.isnan(unchecked["ema"][0.999][name]).sum() == 1
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError, match=rf"{path} is corrupt: tensor ema/0.999/{name} does not match "
                                                  "its SHA-256 checksum") as info:
            load(path)
        assert "\n" not in str(info.value)
    path = save_checkpoint(tmp_path / "d.pt", payload(3))  # a changed counter or config is caught too
    blob = path.read_bytes()
    path.write_bytes(blob.replace(b"cosine", b"cosinf", 1))
    with pytest.raises(CheckpointError, match="configs or counters do not match"):
        load_checkpoint(path)


def test_non_finite_weights_are_rejected_naming_the_file(tmp_path):
    bad = payload(2)
    bad["ema"][0.999]["out_conv.bias"][0] = float("inf")
    path = save_checkpoint(tmp_path / "diverged.pt", bad)  # checksums match: the weights were saved so
    with pytest.raises(CheckpointError, match=rf"{path} holds non-finite weights \(ema/0.999/out_conv.bias"):
        load_model(path)
    assert load_checkpoint(path, verify=False)["step"] == 2


def old_format(payload_):
    """A checkpoint as gcg wrote it before format 2: numpy's RNG state pickled, no tag, no checksums."""
    old = {k: copy.deepcopy(v) for k, v in payload_.items() if k not in ("format", "format_version", "integrity")}
    for rng in old["rng"]["per_rank"]:
        n = rng["numpy"]
        rng["numpy"] = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                        n["cached_gaussian"])
    old["schedule_sampler"] = {"num_timesteps": 1000}  # vars() of a uniform sampler
    return old


def test_old_format_and_foreign_pickles_give_one_line_errors_naming_the_fix(tmp_path, capsys):
    new = load_checkpoint(trained_checkpoint(tmp_path))
    path = tmp_path / "old.pt"
    torch.save(old_format(new), path)
    with pytest.raises(CheckpointError, match=rf"older format.*python -m gcg.checkpoint upgrade {path}$"):
        load_checkpoint(path)
    assert ckpt.main(["upgrade", str(path)]) == 0
    assert "rewritten in format 2" in capsys.readouterr().out
    upgraded = torch.load(path, weights_only=True)
    for key, value in new["model"].items():
        assert torch.equal(upgraded["model"][key], value)
    assert torch.equal(upgraded["rng"]["per_rank"][0]["numpy"]["keys"], new["rng"]["per_rank"][0]["numpy"]["keys"])
    assert ckpt.main(["verify", str(path)]) == 0
    torch.save({"model": {}, "model_config": {}, "made": datetime.date(2020, 1, 1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"needs unpickling Python objects \(datetime.date\), which gcg "
                                              r"never does") as info:
        load_checkpoint(tmp_path / "foreign.pt")
    assert "weights_only=False" not in str(info.value)
    torch.save({"model": {}, "model_config": {"kind": "unet"}}, tmp_path / "untagged.pt")  # no checksums
    with pytest.raises(CheckpointError, match="older format.*upgrade"):
        load_checkpoint(tmp_path / "untagged.pt")
    assert ckpt.main(["verify", str(tmp_path / "foreign.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_stale_temp_files_are_removed_and_others_kept(tmp_path):
    stale = [".checkpoint_0000020.pt.tmp-4242", ".checkpoint.pt.tmp-17", ".checkpoint.pt.link-20"]
    kept = ["checkpoint_0000010.pt", "notes.tmp-1", ".checkpoint_0000020.pt.tmp-x", "metrics.jsonl"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"12345")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p, _ in removed) == sorted(stale) and all(n == 5 for _, n in removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_latest_checkpoint_is_the_newest_complete_file(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / "checkpoint.pt", payload(1))
    assert latest_checkpoint(tmp_path).name == "checkpoint.pt"  # no numbered file: the link itself
    for step in (1, 2):
        save_checkpoint(ckpt.checkpoint_path(tmp_path, step), payload(step))
    # killed after renaming checkpoint_0000002.pt, before re-linking checkpoint.pt (still step 1)
    assert latest_checkpoint(tmp_path).name == "checkpoint_0000002.pt"


def test_ema_export_is_smaller_and_loads_like_the_checkpoint(tmp_path, capsys):
    from gcg.export import main as export_main

    path = trained_checkpoint(tmp_path, ema_rates="0.9,0.99")
    out = tmp_path / "export"
    assert export_main([str(path), str(out), "--ema-rate", "0.99"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("gcg.export: EMA 0.99 at step 3 -> ") and line.count("\n") == 1
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "gcg-export" and config["ema_rate"] == 0.99 and config["step"] == 3
    from safetensors.torch import load_file

    stored = load_checkpoint(path)
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(stored["ema"][0.99])
    assert all(torch.equal(weights[k], v) for k, v in stored["ema"][0.99].items())
    assert (out / "model.safetensors").stat().st_size < path.stat().st_size / 3
    for where in (out, out / "model.safetensors", out / "config.json"):
        model, diffusion = load_model(where)
        reference, ref_diffusion = load_model(path, ema_rate=0.99)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
        assert not model.training and diffusion.num_timesteps == ref_diffusion.num_timesteps == 1000
    assert export_main([str(path), str(tmp_path / "raw"), "--raw"]) == 0
    raw, _ = load_model(tmp_path / "raw")
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in stored["model"].items())


def test_export_errors_are_one_line(tmp_path, capsys):
    from gcg.export import main as export_main

    path = trained_checkpoint(tmp_path)
    (tmp_path / "file").write_text("x")
    for args, message in [([str(path), str(tmp_path / "file")], "is a file; pass a directory"),
                          ([str(path), str(tmp_path / "e"), "--ema-rate", "0.5"], r"no EMA at rate 0.5; stored rates: \[0.999\]"),
                          ([str(tmp_path / "nope.pt"), str(tmp_path / "e")], "not found")]:
        assert export_main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and __import__("re").search(message, err), err
    out = tmp_path / "export"
    assert export_main([str(path), str(out)]) == 0
    with pytest.raises(CheckpointError, match="is a gcg export.*load_model"):
        load_checkpoint(out)
    weights = load_checkpoint(path)["ema"][0.999]["input_conv.weight"]
    overwrite_inside(out / "model.safetensors", weights)
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt: its SHA-256 does not match"):
        load_model(out)
    (out / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found.*python -m gcg.export"):
        load_model(out / "model.safetensors")
