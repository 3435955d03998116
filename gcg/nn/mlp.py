"""A residual MLP denoiser for vector data [N, D]: the analytic toys of ``gcg.toy`` (UNets need images)."""

import dataclasses
from dataclasses import dataclass

import torch

from gcg.nn.layers import timestep_embedding


@dataclass
class MLPConfig:
    """A residual MLP denoiser for vector data [N, D] (the analytic toys; the UNets need images)."""

    dim: int = 2
    hidden: int = 256
    depth: int = 3
    num_classes: int | None = None
    class_null: bool = False  # embedding row num_classes = "no label" (classifier-free guidance)
    learn_sigma: bool = False

    kind = "mlp"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


class MLPDenoiser(torch.nn.Module):
    """model(x [N, D], timesteps [N], y=None [N]) -> [N, D] (or [N, 2D] with learn_sigma)."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        nn, width = torch.nn, cfg.hidden
        self.config = cfg
        self.time_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        rows = None if cfg.num_classes is None else cfg.num_classes + int(cfg.class_null)
        self.label_emb = None if rows is None else nn.Embedding(rows, width)
        self.inp = nn.Linear(cfg.dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width))
                                    for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(),
                                 nn.Linear(width, cfg.dim * (2 if cfg.learn_sigma else 1)))

    @property
    def cfg(self):
        """The config under its older name; ``config``, as on the UNet and the classifier."""
        return self.config

    def forward(self, x, timesteps, y=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.config.hidden))
        if self.label_emb is not None:
            if y is None:
                raise ValueError("this model is class-conditional: pass y [N] (the null label is "
                                 f"{self.config.num_classes} when class_null=True)")
            emb = emb + self.label_emb(y)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


MLP_PRESETS = {"toy_mlp": MLPConfig()}
