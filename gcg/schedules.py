"""Noise schedules and timestep respacing (chapters 01-02).

Convention: every schedule is a 1-D ``torch.float64`` tensor on the CPU. Float64 keeps
products such as alpha_bar_t = prod_s (1 - beta_s) exact to ~1e-16 for T = 4000 steps;
``gcg.diffusion`` casts to the input's dtype and device only when a value is used.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, List, Union

import torch


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> torch.Tensor:
    """The beta_t schedule named ``"linear"`` or ``"cosine"``, float64 of shape [T].

    - ``"linear"``: Ho et al. 2020 Sec. 4, beta from 1e-4 to 0.02 over T = 1000, with both ends
      scaled by 1000 / T so any T gives the same total amount of noise (Nichol & Dhariwal 2021).
    - ``"cosine"``: Nichol & Dhariwal 2021 Eq. (17), alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2)
      with s = 0.008, beta clipped at 0.999.
    """
    num_diffusion_timesteps = _check_num_timesteps(num_diffusion_timesteps)
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        beta_end = scale * 0.02
        if beta_end >= 1.0:
            raise ValueError(
                f"the linear schedule needs T >= 21 steps (T={num_diffusion_timesteps} gives "
                f"beta_T = {beta_end:.3g} >= 1); use the 'cosine' schedule for very short chains"
            )
        return torch.linspace(scale * 1e-4, beta_end, num_diffusion_timesteps, dtype=torch.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps,
            lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2,
        )
    raise ValueError(f"unknown beta schedule {schedule_name!r}; choose 'linear' or 'cosine'")


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> torch.Tensor:
    """Discretise a continuous alpha_bar(t), t in [0, 1], into betas, float64 of shape [T].

    beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)
    (Nichol & Dhariwal 2021, Sec. 3.2); clipping avoids beta = 1 at the end of the chain.
    """
    num_diffusion_timesteps = _check_num_timesteps(num_diffusion_timesteps)
    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float64)


def space_timesteps(
    num_timesteps: int, section_counts: Union[str, int, Iterable[int]]
) -> List[int]:
    """The sorted original timesteps kept by a respaced chain (Nichol & Dhariwal 2021 Sec. 4).

    ``section_counts`` is
    - ``"N"`` or ``N``: N steps evenly spaced over [0, T-1], both ends kept;
    - ``"a,b,c"`` or ``[a, b, c]``: the chain cut into equal sections, section i gets its count
      evenly spaced within it (both ends of the section kept);
    - ``"ddimN"``: ``range(0, T, k)`` for the smallest integer stride k giving exactly N steps
      (the DDIM paper's uniform skipping, Song et al. 2020 Sec. 4.2).

    Example: T = 1000, "ddim25" -> [0, 40, 80, ..., 960]; "250" -> [0, 4, 8, 12, 16, 20, ..., 999].
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            desired = _parse_count(spec[len("ddim"):], section_counts)
            for stride in range(1, num_timesteps + 1):
                steps = list(range(0, num_timesteps, stride))
                if len(steps) == desired:
                    return steps
            raise ValueError(
                f"cannot take exactly {desired} steps from {num_timesteps} with an integer stride "
                f"({section_counts!r}); pick another N or use the plain spec '{desired}'"
            )
        counts = [_parse_count(part, section_counts) for part in spec.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError("empty respacing spec; give e.g. '250', '10,10,10' or 'ddim50'")

    size_per, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(
                f"section {i} of {section_counts!r} asks for {count} steps but has {size} "
                f"timesteps (T={num_timesteps}); each count must be between 1 and its section size"
            )
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(kept))


def _parse_count(text: str, spec) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"cannot parse respacing spec {spec!r}; use 'N', 'a,b,c' or 'ddimN' with integers"
        ) from None


def _check_num_timesteps(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of diffusion steps must be a positive int, got {n!r}")
    return n
