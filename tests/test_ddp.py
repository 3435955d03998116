"""DDP: `torchrun --nproc_per_node 2 -m gcg.train` (gloo on CPU) matches one process, same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gcg.checkpoint import load_checkpoint
from gcg.presets import apply_overrides, get_preset
from gcg.train import train

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["model=tiny", "batch_size=8", "dropout=0", "log_every=1", "sample_every=0",
            "num_sample_images=2", "sample_steps=ddim2", "schedule_sampler=loss-second-moment",
            "ema_rates=0.9"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gcg.train", "--preset", "digits", "--max-steps", "2", "--out-dir", str(out),
           "--no-progress", "--set", "microbatch=2", *[a for s in SETTINGS for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = load_checkpoint(out / "checkpoint.pt")
    assert ddp["step"] == 2 and ddp["rng"]["world_size"] == 2
    assert len(ddp["rng"]["per_rank"]) == 2  # every rank's RNG streams are saved

    config = apply_overrides(get_preset("digits"), SETTINGS + ["max_steps=2", "out_dir=none"])
    single = train(config, progress=False)  # one process, the whole batch of 8 at once
    # same examples, t, noise and label dropout => same loss and gradient norm at every step
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for ours, theirs in zip(single.history, logged, strict=True):
        for key in ("loss", "grad_norm"):
            assert theirs[key] == pytest.approx(ours[key], rel=1e-5), (ours["step"], key)
    # weights: Adam moves every weight by ~lr = 1e-3 per step, so a wrong shard, noise row or
    # gradient average would show up at that scale; float summation order in the all-reduce
    # differs only at the level of Adam's eps on the near-zero gradients of step 2.
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=0, atol=1e-4, msg=key)
    for key, value in single.ema_models[0.9].state_dict().items():
        torch.testing.assert_close(ddp["ema"][0.9][key], value, rtol=0, atol=1e-4, msg=key)
