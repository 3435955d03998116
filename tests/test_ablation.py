"""gcg.ablation: held-out loss with fixed t and noise, the resumable JSON of runs, the paired summary,
and the benchmark that uses them (benchmarks/adm_ablation.py) resuming without retraining."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from gcg import ablation
from gcg.diffusion import GaussianDiffusion
from gcg.schedules import get_named_beta_schedule


class Scale(torch.nn.Module):
    """eps_hat = w * x_t: a one-parameter model whose loss can be written by hand."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(float(w)))

    def forward(self, x, t, y=None):
        return self.w * x


def _diffusion(T=50):
    return GaussianDiffusion(get_named_beta_schedule("linear", T))


def test_heldout_loss_equals_hand_computation():
    diffusion, model = _diffusion(), Scale(0.3)
    x = torch.randn(7, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(11)
    alpha_bar = torch.cumprod(1 - get_named_beta_schedule("linear", 50).double(), 0)
    expected = 0.0
    for _ in range(3):
        t = torch.randint(0, 50, (7,), generator=g)
        noise = torch.randn(x.shape, generator=g)
        a = alpha_bar[t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * x + (1 - a).sqrt() * noise
        expected += ((0.3 * x_t - noise) ** 2).mean().item() / 3
    got = ablation.heldout_loss(model, diffusion, x, None, seed=11, repeats=3)
    assert got == pytest.approx(expected, rel=1e-5)
    # deterministic given the seed, and the seed matters
    assert ablation.heldout_loss(model, diffusion, x, None, seed=11, repeats=3) == got
    assert ablation.heldout_loss(model, diffusion, x, None, seed=12, repeats=3) != pytest.approx(got, rel=1e-3)


def test_heldout_loss_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        ablation.heldout_loss(Scale(0.0), _diffusion(), torch.zeros(2, 1, 2, 2), None, repeats=0)


def test_ablation_config_applies_the_change_and_names_unknown_fields():
    config = ablation.ablation_config(dict(num_res_blocks=2), seed=3, steps=40)
    assert config.model_overrides["num_res_blocks"] == 2 and config.model_overrides["num_heads"] == 1
    assert (config.seed, config.max_steps, config.batch_size) == (3, 40, 32)
    assert ablation.ablation_config({}, 0, 10).model_overrides["num_res_blocks"] == 1
    with pytest.raises(ValueError, match=r"unknown network field\(s\) \['num_head'\]"):
        ablation.ablation_config(dict(num_head=2), 0, 10)
    with pytest.raises(ValueError, match="must be positive"):
        ablation.ablation_config({}, 0, 0)


def test_save_run_resumes_and_replaces(tmp_path):
    path = tmp_path / "runs.json"
    assert ablation.load_runs(path) == []
    ablation.save_run(path, dict(variant="baseline", seed=0, heldout=1.0), meta=dict(steps=5))
    ablation.save_run(path, dict(variant="depth 2", seed=0, heldout=0.9))
    runs = ablation.save_run(path, dict(variant="baseline", seed=0, heldout=0.8))  # same key: replaced
    assert sorted((r["variant"], r["heldout"]) for r in runs) == [("baseline", 0.8), ("depth 2", 0.9)]
    assert json.loads(path.read_text())["steps"] == 5
    assert ablation.missing_runs(runs, ["baseline", "depth 2"], [0, 1]) == [("baseline", 1), ("depth 2", 1)]
    ablation.save_meta(path, dict(timing={"baseline": 0.1}))
    assert json.loads(path.read_text())["timing"] == {"baseline": 0.1} and ablation.load_runs(path) == runs


def test_load_runs_names_a_bad_file(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*another --out"):
        ablation.load_runs(path)
    path.write_text('{"runs": [{"seed": 0}]}')
    with pytest.raises(ValueError, match="no list of runs"):
        ablation.load_runs(path)


def test_paired_summary_by_hand():
    runs = [dict(variant="baseline", seed=s, heldout=h) for s, h in [(0, 1.0), (1, 2.0), (2, 3.0)]]
    runs += [dict(variant="b", seed=s, heldout=h) for s, h in [(0, 0.9), (1, 1.7), (2, 2.8)]]
    stats = ablation.paired_summary(runs)
    assert stats["baseline"]["mean"] == pytest.approx(2.0) and stats["baseline"]["se"] == pytest.approx(1 / math.sqrt(3))
    # paired differences -0.1, -0.3, -0.2: mean -0.2, sd 0.1, se 0.1 / sqrt(3)
    assert stats["b"]["delta"] == pytest.approx(-0.2) and stats["b"]["delta_se"] == pytest.approx(0.1 / math.sqrt(3))
    assert stats["baseline"]["delta"] == 0.0
    assert math.isnan(ablation.mean_se([4.0])[1])
    with pytest.raises(ValueError, match="no 'baseline' run"):
        ablation.paired_summary(runs[3:])


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "adm_ablation.py"
    spec = importlib.util.spec_from_file_location("adm_ablation_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_skips_runs_already_stored(tmp_path, monkeypatch, capsys):
    bench = _bench()
    trained = []

    def fake_run(variant, seed, steps, log_every, *data):
        trained.append((variant, seed))
        return dict(variant=variant, seed=seed, steps=steps, params=1, gflop_per_step=1.0, seconds_per_step=0.1,
                    heldout=1.0 + seed, history=[[steps, 1.0, 1.0]])

    monkeypatch.setattr(bench, "one_run", fake_run)
    monkeypatch.setattr(bench.torch, "set_num_threads", lambda n: None)
    out = tmp_path / "a.json"
    argv = ["--out", str(out), "--steps", "5", "--seeds", "0", "1", "--variants", "baseline", "depth 2"]
    assert bench.main(argv + ["--max-runs", "3"]) == 0
    assert trained == [("baseline", 0), ("depth 2", 0), ("baseline", 1)]
    assert bench.main(argv) == 0
    assert trained[3:] == [("depth 2", 1)]  # only the missing run
    assert bench.main(argv) == 0 and len(trained) == 4
    assert "all 4 runs present" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds runs of \\[5\\] steps; pass --steps 5"):
        bench.main(["--out", str(out), "--steps", "6"])
    # --time stores s/step beside the runs and trains nothing else
    monkeypatch.setattr(bench, "time_variants", lambda variants: {v: 0.5 for v in variants})
    assert bench.main(["--out", str(out), "--time", "--variants", "baseline"]) == 0
    assert json.loads(out.read_text())["timing"]["seconds_per_step"] == {"baseline": 0.5} and len(trained) == 4
    assert "| baseline | 2 | 1 | 1.000 | 0.500 |" in (bench.main(["--out", str(out), "--summary"]), capsys.readouterr().out)[1]


def test_benchmark_names_an_unknown_variant(capsys):
    with pytest.raises(SystemExit):
        _bench().parse_args(["--variants", "depth2"])
    assert "unknown variant(s) ['depth2']" in capsys.readouterr().err
