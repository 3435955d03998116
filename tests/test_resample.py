"""Timestep samplers (gcg.resample): uniform and the loss-aware importance sampler."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gcg.diffusion import DiffusionConfig
from gcg.resample import LossSecondMomentResampler, UniformSampler, create_named_schedule_sampler


def test_uniform_sampler_covers_all_steps_with_unit_weights():
    sampler = UniformSampler(DiffusionConfig(steps=50).build())
    t, w = sampler.sample(20000, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and w.dtype == torch.float32 and t.shape == w.shape == (20000,)
    assert t.min() == 0 and t.max() == 49
    assert torch.equal(w, torch.ones(20000))
    counts = torch.bincount(t, minlength=50).double()
    assert (counts / 20000 - 1 / 50).abs().max() < 0.006  # ~4 standard errors of a frequency


def test_second_moment_sampler_is_uniform_until_every_step_has_ten_losses():
    sampler = LossSecondMomentResampler(5)
    for t in range(5):
        sampler.update_with_all_losses([t] * (9 if t == 3 else 10), [1.0 + t] * 10)
    assert not sampler.warmed_up()
    assert torch.equal(sampler.weights(), torch.ones(5, dtype=torch.float64))
    sampler.update_with_all_losses([3], [4.0])
    assert sampler.warmed_up()


def test_second_moment_sampler_weights_and_unbiased_importance_weights():
    T, uniform_prob = 4, 0.001
    sampler = LossSecondMomentResampler(T, uniform_prob=uniform_prob)
    # loss history at t: ten values +-c_t, so sqrt(E[L^2]) = c_t exactly
    c = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    for t in range(T):
        sampler.update_with_all_losses([t] * 10, [c[t].item() * (-1) ** i for i in range(10)])
    p = sampler.weights()
    expected = c / c.sum() * (1 - uniform_prob) + uniform_prob / T
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=0)
    t, w = sampler.sample(50000, "cpu", generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(t, minlength=T).double() / t.numel()
    assert (freq - expected).abs().max() < 0.01
    torch.testing.assert_close(w.double(), 1 / (T * expected[t]), rtol=1e-6, atol=0)
    # importance weighting is unbiased: E_p[w_t L_t] = (1/T) sum_t L_t
    losses = torch.tensor([0.5, 1.0, 2.0, 8.0], dtype=torch.float64)
    assert (w.double() * losses[t]).mean().item() == pytest.approx(losses.mean().item(), rel=0.03)


def test_history_keeps_the_last_values_and_round_trips_through_state_dict():
    sampler = LossSecondMomentResampler(2, history_per_term=3)
    sampler.update_with_local_losses(torch.tensor([0, 0, 0, 0, 1]), torch.tensor([1.0, 2.0, 3.0, 4.0, 7.0]))
    state = sampler.state_dict()
    assert state["loss_history"][0].tolist() == [2.0, 3.0, 4.0]
    assert state["loss_counts"].tolist() == [3, 1]
    other = LossSecondMomentResampler(2, history_per_term=3)
    other.load_state_dict(state)
    assert torch.equal(other.weights(), sampler.weights())
    with pytest.raises(ValueError, match="outside"):
        sampler.update_with_all_losses([2], [1.0])
    with pytest.raises(ValueError, match="shape"):
        LossSecondMomentResampler(3, history_per_term=3).load_state_dict(state)
    with pytest.raises(ValueError, match="uniform.*loss-second-moment"):
        create_named_schedule_sampler("importance", 10)


def _ddp_worker(rank, world_size, tmp):
    init = f"file://{os.path.join(tmp, 'init')}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        sampler = LossSecondMomentResampler(3, history_per_term=2)
        # rank 0 sees two losses, rank 1 three: uneven local batches must be gathered correctly
        local_t = torch.tensor([0, 1]) if rank == 0 else torch.tensor([1, 2, 2])
        local_l = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([3.0, 4.0, 5.0])
        sampler.update_with_local_losses(local_t, local_l)
        torch.save(sampler.state_dict()["loss_history"], os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_update_with_local_losses_gathers_every_rank_under_ddp():
    with tempfile.TemporaryDirectory() as tmp:
        # fork: the workers inherit the imported modules instead of re-importing torch
        mp.start_processes(_ddp_worker, args=(2, tmp), nprocs=2, join=True, start_method="fork")
        expected = torch.tensor([[1.0, 0.0], [2.0, 3.0], [4.0, 5.0]], dtype=torch.float64)
        for rank in range(2):
            torch.testing.assert_close(torch.load(os.path.join(tmp, f"rank{rank}.pt")), expected)
