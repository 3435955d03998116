"""Noise schedules and timestep respacing (gcg.schedules)."""

import math

import pytest
import torch

from gcg.schedules import betas_for_alpha_bar, get_named_beta_schedule, space_timesteps


def test_linear_schedule_endpoints_scale_with_T():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    # 1000 / T scaling: 4000 steps go from 2.5e-5 to 5e-3 and keep the total noise sum_t beta_t
    long = get_named_beta_schedule("linear", 4000)
    assert long[0].item() == pytest.approx(2.5e-5, rel=1e-12)
    assert long[-1].item() == pytest.approx(5e-3, rel=1e-12)
    assert long.sum().item() == pytest.approx(betas.sum().item(), rel=1e-3)


def test_cosine_schedule_matches_alpha_bar_where_unclipped():
    T, s = 1000, 0.008
    betas = get_named_beta_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # Nichol & Dhariwal Eq. (17)
    alpha_bar = torch.cumprod(1 - betas, 0)
    expected = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    unclipped = betas < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]  # only the last beta hits the clip
    torch.testing.assert_close(alpha_bar[:-1], expected[:-1], rtol=1e-10, atol=0)
    assert betas.max().item() == 0.999


def test_betas_for_alpha_bar_reproduces_a_custom_curve():
    T = 64
    alpha_bar = lambda t: math.exp(-5 * t**2)
    betas = betas_for_alpha_bar(T, alpha_bar, max_beta=0.999)
    got = torch.cumprod(1 - betas, 0)
    expected = torch.tensor([alpha_bar((i + 1) / T) for i in range(T)], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_schedule_errors_name_the_fix():
    with pytest.raises(ValueError, match="linear.*cosine"):
        get_named_beta_schedule("quadratic", 100)
    with pytest.raises(ValueError, match="cosine"):
        get_named_beta_schedule("linear", 10)  # beta_T = 2 > 1
    with pytest.raises(ValueError, match="positive int"):
        get_named_beta_schedule("cosine", 0)
    # the linear schedule's last beta is 0.02 * 1000 / T: T = 20 reaches beta = 1 exactly, T = 21 is the shortest
    with pytest.raises(ValueError, match="T >= 21"):
        get_named_beta_schedule("linear", 20)
    assert get_named_beta_schedule("linear", 21)[-1].item() == pytest.approx(0.02 * 1000 / 21, rel=1e-12)
    assert get_named_beta_schedule("cosine", 1).tolist() == [0.999]  # one step: alpha_bar(1) = 0, clipped


def test_space_timesteps_even_spacing_keeps_both_ends():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    assert set(torch.diff(torch.tensor(steps)).tolist()) <= {4, 5}
    assert steps[:6] == [0, 4, 8, 12, 16, 20]
    assert space_timesteps(1000, 250) == steps
    assert space_timesteps(10, "10") == list(range(10))


def test_space_timesteps_ddim_uses_the_smallest_integer_stride():
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(10, "ddim7")


def test_space_timesteps_sections():
    steps = space_timesteps(300, "10,2,1")
    first, second, third = steps[:10], steps[10:12], steps[12:]
    assert first[0] == 0 and first[-1] == 99 and len(first) == 10
    assert second == [100, 199]
    assert third == [200]
    # uneven split: 10 timesteps in 3 sections of sizes 4, 3, 3
    assert space_timesteps(10, [2, 2, 2]) == [0, 3, 4, 6, 7, 9]
    with pytest.raises(ValueError, match="section 1"):
        space_timesteps(100, "10,60")
    with pytest.raises(ValueError, match="cannot parse"):
        space_timesteps(100, "ten")
