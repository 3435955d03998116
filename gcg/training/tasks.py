"""The three objectives the trainer optimises, one small class each (`TrainConfig.task`).

A task says how t is drawn for a batch (`draw_t`), what the per-example losses are (`loss`),
which per-example statistics the log keeps (`stats`), and whether the run makes sample grids
(`makes_samples`) conditioned on what (`grid_conditioning`).
Everything else (the noise, label dropout, accumulation, the optimizer and EMA step) is shared
by `gcg.training.step.train_step`.

  DiffusionTask   L_simple / L_hybrid of `GaussianDiffusion.training_losses` (Ho et al. 2020
                  Eq. (14), Nichol & Dhariwal 2021 Eq. (16)); t from the run's schedule sampler
                  (`gcg.resample`: uniform, or importance-sampled by the loss history).
  SuperResTask    the same loss, the model also seeing an augmented low-resolution copy of x_0
                  (`gcg.cascade.super_res_kwargs`, Ho et al. 2021 Sec. 3.2).
  ClassifierTask  the noise-aware classifier of Dhariwal & Nichol 2021 Sec. 4.1: t ~ U{0..T-1},
                  cross-entropy on x_t ~ q(x_t | x_0), top-1 / top-5 correctness.

Each method takes the run's `gcg.training.state.TrainState` (model, diffusion, generators).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gcg.cascade import super_res_kwargs
from gcg.images import downsample


class DiffusionTask:
    """Denoising diffusion: per-example L_simple ("mse") or L_hybrid ("mse" + "vb")."""

    stats = ("loss", "mse", "vb")  # per-example values kept for the log (when the loss has them)
    makes_samples = True  # sample grids during and after training

    def draw_t(self, state, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t [n] and importance weights [n] from the schedule sampler (on the shared CPU generator)."""
        return state.schedule_sampler.sample(n, state.info.device, generator=state.cpu_generator)

    def model_kwargs(self, state, x: torch.Tensor, y: torch.Tensor | None) -> dict:
        """What the network sees besides (x_t, t): the class labels of a class-conditional model."""
        return {} if y is None or state.model_config.num_classes is None else {"y": y}

    def loss(self, state, x, t, noise, y) -> dict:
        """Per-example losses [b] of x_0 = `x` [b, ...] noised with `noise` at `t` [b]."""
        return state.diffusion.training_losses(state.forward, x, t, model_kwargs=self.model_kwargs(state, x, y),
                                               noise=noise)

    def observe(self, state, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Tell a loss-aware schedule sampler the step's losses [B] at t [B]."""
        if hasattr(state.schedule_sampler, "update_with_local_losses"):
            state.schedule_sampler.update_with_local_losses(t, losses)

    def grid_conditioning(self, state, dataset, n: int):
        """(n, class labels [n] or None, low_res or None) of a sample grid of n images: the
        labels 0, 1, 2, ... in turn for a class-conditional model."""
        labels = None
        if state.model_config.num_classes is not None:
            labels = torch.arange(n, device=state.info.device) % state.model_config.num_classes
        return n, labels, None


class SuperResTask(DiffusionTask):
    """A super-resolution stage: diffusion on x_0, conditioned on its augmented low-resolution copy."""

    def model_kwargs(self, state, x, y) -> dict:
        cfg = state.config
        kwargs = super().model_kwargs(state, x, y)
        kwargs.update(super_res_kwargs(x, low_res_size=cfg.low_res_size, augment=cfg.augment,
                                       max_aug_level=cfg.max_aug_level, diffusion=state.diffusion,
                                       generator=state.rank_generator))
        if kwargs.get("aug_level") is None:
            kwargs.pop("aug_level", None)
        return kwargs

    def grid_conditioning(self, state, dataset, n: int):
        """The first n (at most len(dataset)) training images, downsampled to `low_res_size`
        [n, C, r, r], and their labels: the grid upsamples real low-resolution images."""
        device = state.info.device
        reference = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(n, len(dataset)))])
        low_res = downsample(reference, state.config.low_res_size).to(device)
        labels = None
        if state.model_config.num_classes is not None:
            labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(reference))], device=device)
        return len(reference), labels, low_res


class ClassifierTask:
    """A noise-aware classifier p(y | x_t, t) for classifier guidance."""

    stats = ("loss", "correct1", "correct5")
    makes_samples = False

    def draw_t(self, state, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t ~ U{0, ..., classifier_t_max * T - 1} [n], unit weights [n]."""
        device = state.info.device
        t_high = max(1, int(round(state.config.classifier_t_max * state.diffusion.num_timesteps)))
        t = torch.randint(0, t_high, (n,), generator=state.cpu_generator).to(device)
        return t, torch.ones(n, device=device)

    def loss(self, state, x, t, noise, y) -> dict:
        """Cross-entropy [b] of classifying x_t ~ q(x_t | x_0) (Dhariwal & Nichol 2021 Sec. 4.1)."""
        logits = state.forward(state.diffusion.q_sample(x, t, noise=noise), t).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        return {"loss": F.cross_entropy(logits, y, reduction="none"),
                "correct1": (top[:, 0] == y).float(), "correct5": (top == y[:, None]).any(-1).float()}

    def observe(self, state, t, losses) -> None:
        """t is uniform: nothing to learn from the losses."""


TASKS = {"diffusion": DiffusionTask, "super_res": SuperResTask, "classifier": ClassifierTask}


def make_task(name: str):
    """The task of `TrainConfig.task`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]()
