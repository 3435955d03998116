"""Timestep samplers for the training loss (chapter 02).

A sampler draws chain indices t with probabilities p_t and returns importance weights
1 / (T p_t), so that E_t[w_t L_t] is the uniform average of L_t whatever p is.
``LossSecondMomentResampler`` is the importance sampling of Nichol & Dhariwal 2021 Eq. (18):
p_t proportional to sqrt(E[L_t^2]) over the last 10 losses seen at t, uniform until every t
has 10 of them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _num_timesteps(diffusion_or_steps) -> int:
    steps = getattr(diffusion_or_steps, "num_timesteps", diffusion_or_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"give a GaussianDiffusion or a positive number of steps, got {diffusion_or_steps!r}")
    return steps


class ScheduleSampler:
    """Base class: subclasses define ``weights()`` -> [T] non-negative float64 (unnormalised p_t)."""

    def __init__(self, diffusion_or_steps):
        self.num_timesteps = _num_timesteps(diffusion_or_steps)

    def weights(self) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, batch_size: int, device=None, generator=None):
        """Draw t ~ p. Returns (t [batch_size] int64, weights [batch_size] float32 = 1 / (T p_t)),
        both on ``device``. ``generator`` is a CPU torch.Generator for reproducible draws."""
        w = self.weights()
        p = w / w.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        importance = 1.0 / (len(p) * p[t])
        return t.to(device), importance.to(device=device, dtype=torch.float32)


class UniformSampler(ScheduleSampler):
    """p_t = 1 / T: the sampling of L_simple (Ho et al. 2020 Algorithm 1)."""

    def weights(self) -> torch.Tensor:
        return torch.ones(self.num_timesteps, dtype=torch.float64)


class LossAwareSampler(ScheduleSampler):
    """A sampler that learns from the losses; DDP-friendly ``update_with_local_losses``."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor):
        """Record this rank's (t [B], loss [B]); under torch.distributed every rank receives every
        rank's losses (all_gather), so all ranks keep the same p and draw consistently."""
        local_ts = local_ts.detach().reshape(-1)
        local_losses = local_losses.detach().reshape(-1)
        if local_ts.shape != local_losses.shape:
            raise ValueError(f"got {local_ts.numel()} timesteps but {local_losses.numel()} losses")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = local_ts.device
            size = torch.tensor([local_ts.numel()], device=device)
            sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
            dist.all_gather(sizes, size)
            max_size = int(max(int(s) for s in sizes))
            padded_t = torch.zeros(max_size, dtype=local_ts.dtype, device=device)
            padded_l = torch.zeros(max_size, dtype=local_losses.dtype, device=device)
            padded_t[: local_ts.numel()], padded_l[: local_losses.numel()] = local_ts, local_losses
            all_t = [torch.zeros_like(padded_t) for _ in sizes]
            all_l = [torch.zeros_like(padded_l) for _ in sizes]
            dist.all_gather(all_t, padded_t)
            dist.all_gather(all_l, padded_l)
            ts = torch.cat([tt[: int(n)] for tt, n in zip(all_t, sizes)])
            losses = torch.cat([ll[: int(n)] for ll, n in zip(all_l, sizes)])
        else:
            ts, losses = local_ts, local_losses
        self.update_with_all_losses(ts.cpu().tolist(), losses.double().cpu().tolist())

    def update_with_all_losses(self, ts, losses):
        raise NotImplementedError


class LossSecondMomentResampler(LossAwareSampler):
    """Importance sampling for L_vlb, Nichol & Dhariwal 2021 Eq. (18).

    p_t proportional to sqrt(mean of the last ``history_per_term`` squared losses at t), mixed with
    ``uniform_prob`` of the uniform distribution; uniform until every t has a full history."""

    def __init__(self, diffusion_or_steps, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(diffusion_or_steps)
        if history_per_term < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError("history_per_term must be >= 1 and uniform_prob in [0, 1]")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = torch.zeros(self.num_timesteps, history_per_term, dtype=torch.float64)
        self._loss_counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        """True once every timestep has a full history of losses."""
        return bool((self._loss_counts == self.history_per_term).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = self._loss_history.pow(2).mean(dim=1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update_with_all_losses(self, ts, losses):
        """Append each loss to its timestep's history (the oldest value drops out when full)."""
        for t, loss in zip(ts, losses):
            t = int(t)
            if not 0 <= t < self.num_timesteps:
                raise ValueError(f"timestep {t} outside [0, {self.num_timesteps})")
            count = int(self._loss_counts[t])
            if count == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:].clone()
                self._loss_history[t, -1] = float(loss)
            else:
                self._loss_history[t, count] = float(loss)
                self._loss_counts[t] = count + 1

    def state_dict(self) -> dict:
        """The loss history, so a resumed run keeps its sampling distribution."""
        return {"loss_history": self._loss_history.clone(), "loss_counts": self._loss_counts.clone()}

    def load_state_dict(self, state: dict):
        if state["loss_history"].shape != self._loss_history.shape:
            raise ValueError(
                f"loss history has shape {tuple(state['loss_history'].shape)}, this sampler "
                f"{tuple(self._loss_history.shape)}"
            )
        self._loss_history = state["loss_history"].to(torch.float64).clone()
        self._loss_counts = state["loss_counts"].to(torch.long).clone()


def create_named_schedule_sampler(name: str, diffusion_or_steps) -> ScheduleSampler:
    """"uniform" -> UniformSampler; "loss-second-moment" -> LossSecondMomentResampler (ADM's names)."""
    if name == "uniform":
        return UniformSampler(diffusion_or_steps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion_or_steps)
    raise ValueError(f"unknown schedule sampler {name!r}; choose 'uniform' or 'loss-second-moment'")
