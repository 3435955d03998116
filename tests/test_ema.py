"""The exponential moving average of the weights that sampling uses (Ho et al. 2020, App. B), and its
warm-up min(rate, (1 + t) / (10 + t)) for short runs."""

import copy
import dataclasses
from math import comb, factorial

import pytest
import torch

from gcg.train import ema_warmup_rate, update_ema


def test_update_ema_moves_each_average_one_minus_rate_of_the_way_to_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    emas = {0.9: copy.deepcopy(model), 0.5: copy.deepcopy(model)}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics (buffers)
    update_ema(emas, model)
    for rate, ema in emas.items():
        for name, p in model.named_parameters():
            expected = rate * before[name] + (1 - rate) * p.detach()  # theta_ema <- rate theta_ema + (1 - rate) theta
            torch.testing.assert_close(ema.get_parameter(name), expected, msg=f"rate {rate}: {name}")
        for name, b in model.named_buffers():
            torch.testing.assert_close(ema.get_buffer(name), b, rtol=0, atol=0)  # buffers are copied


def test_update_ema_at_rate_zero_copies_and_at_rate_one_keeps():
    model = torch.nn.Linear(2, 2)
    emas = {0.0: copy.deepcopy(model), 1.0: copy.deepcopy(model)}
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(emas, model)
    torch.testing.assert_close(emas[0.0].weight, model.weight)
    torch.testing.assert_close(emas[1.0].weight, start)


# ----------------------------------------------------------------------------- warm-up
def test_warmup_rate_is_one_plus_t_over_ten_plus_t_capped_at_the_rate():
    assert [ema_warmup_rate(0.999, t) for t in (0, 1, 8, 90)] == pytest.approx([1 / 10, 2 / 11, 9 / 18, 91 / 100])
    assert ema_warmup_rate(0.5, 7) == pytest.approx(8 / 17) and ema_warmup_rate(0.5, 8) == 0.5
    assert ema_warmup_rate(0.5, 1000) == 0.5  # capped: the constant rate from step (10 r - 1) / (1 - r) on
    assert ema_warmup_rate(0.999, 8989) < 0.999 == pytest.approx(ema_warmup_rate(0.999, 8990), abs=1e-15)


def _ema_of_constant_weights(rate, steps, warmup):
    """EMA of a parameter that is 1 at every step, starting from 0: 1 - prod_t rho_t."""
    model = torch.nn.Linear(1, 1, bias=False).double()
    emas = {rate: copy.deepcopy(model)}
    with torch.no_grad():
        emas[rate].weight.zero_()
        model.weight.fill_(1.0)
    for t in range(steps):
        update_ema(emas, model, step=t if warmup else None)
    return emas[rate].weight.double().item()


def test_warmup_leaves_one_over_binomial_of_the_initial_weights():
    # prod_{t<k} (1 + t) / (10 + t) = 9! k! / (k + 9)! = 1 / C(k + 9, 9): the initial weights' share
    for k in (1, 5, 30):
        left = 1 - _ema_of_constant_weights(0.999, k, warmup=True)
        assert left == pytest.approx(1 / comb(k + 9, 9), rel=1e-9), k
    # past the cap (rate 0.5 from t = 8 on) the constant rate takes over
    left = 1 - _ema_of_constant_weights(0.5, 12, warmup=True)
    assert left == pytest.approx(factorial(8) * factorial(9) / factorial(17) * 0.5 ** 4, rel=1e-9)
    # without warm-up: rate ** k of the initial weights stay (30 % for 0.999 after 1200 steps)
    assert 1 - _ema_of_constant_weights(0.9, 5, warmup=False) == pytest.approx(0.9 ** 5, rel=1e-9)


def _tiny_digits(tmp_path, **overrides):
    from gcg.presets import apply_overrides, get_preset

    sets = dict(model="tiny", batch_size=4, max_steps=4, log_every=2, sample_every=0, dropout=0.0,
                num_sample_images=2, sample_steps="ddim2", ema_rates="0.9,0.999", ema_warmup=True,
                out_dir=str(tmp_path / "run"))
    return apply_overrides(get_preset("digits"), {**sets, **overrides})


def test_trainer_warms_up_by_its_step_count(tmp_path):
    """After one step the warmed-up EMA is 0.1 initial + 0.9 trained weights, whatever the rate."""
    from gcg.train import setup, train

    config = _tiny_digits(tmp_path, max_steps=1, out_dir=None)
    initial = [p.detach().clone() for p in setup(config)[0].model.parameters()]
    result = train(config, progress=False)
    for rate in (0.9, 0.999):
        for p0, p1, e in zip(initial, result.model.parameters(), result.ema_models[rate].parameters()):
            torch.testing.assert_close(e, 0.1 * p0 + 0.9 * p1.detach())
    plain = train(dataclasses.replace(config, ema_warmup=False), progress=False)
    for p0, p1, e in zip(initial, plain.model.parameters(), plain.ema_models[0.9].parameters()):
        torch.testing.assert_close(e, 0.9 * p0 + 0.1 * p1.detach())


def test_resume_with_warmup_is_exact(tmp_path):
    """The step count in the checkpoint drives the warm-up: 2 + 2 steps equal 4 straight, bit for bit."""
    from gcg.train import train

    config = _tiny_digits(tmp_path)
    straight = train(dataclasses.replace(config, out_dir=str(tmp_path / "straight")), progress=False)
    train(dataclasses.replace(config, max_steps=2), progress=False)
    resumed = train(config, progress=False, resume=True)
    assert resumed.step == 4
    for rate in (0.9, 0.999):
        for a, b in zip(straight.ema_models[rate].parameters(), resumed.ema_models[rate].parameters()):
            assert torch.equal(a, b), rate


def test_paper_recipes_keep_the_constant_rate_and_small_presets_warm_up():
    from gcg.presets import get_preset

    for name in ("imagenet64", "imagenet64-base32", "imagenet64-sr32"):
        assert (get_preset(name).ema_rates, get_preset(name).ema_warmup) == ((0.9999,), False), name
    assert get_preset("digits").ema_warmup and get_preset("toy").ema_warmup


@pytest.mark.parametrize("args, message", [
    (["--snapshots", "a,b"], "--snapshots 'a,b': give steps"),
    (["--snapshots", "900"], "give steps in 1..max_steps=800"),
    (["--rates", "1.5"], "--rates 1.5: give EMA rates in (0, 1)"),
    (["--seeds", "x"], "--seeds 'x': give sampling seeds"),
    (["--num-samples", "10"], "give at least 100"),
    (["--set", "bogus=1"], "unknown config key 'bogus'"),
    (["--no-train", "--snapshots", "800"], "no snapshot of step(s) [800]"),
])
def test_bench_digits_rejects_bad_arguments_in_one_line(tmp_path, args, message):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_digits.py"
    spec = importlib.util.spec_from_file_location("bench_digits", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--out", str(tmp_path), *args])
    assert message in str(exc.value) and "\n" not in str(exc.value)
