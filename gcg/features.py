"""A small domain feature network that gcg trains itself, for metrics on offline data sets.

The FID Inception network cannot be downloaded on the book's machines, and it is a poor judge of
8x8 digits anyway. Instead each chapter trains this classifier on the real training images and
measures Fréchet distance / precision / recall / IS on its features. Name the results honestly:
"FD on domain features" is *not* comparable to published FID numbers.

The network mirrors what the metrics use from Inception-v3, at a small scale:
``pool`` = global-average-pooled penultimate features (FID, precision/recall),
``spatial`` = the first few channels of an intermediate feature map, flattened channels-last
(sFID), ``logits``/``probs`` = the classifier output (IS).

Training is deterministic for a given seed (its own ``torch.Generator`` for initialisation and
shuffling; no dropout, no batch norm).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gcg.metrics import spatial_features

__all__ = ["DomainFeatureConfig", "DomainFeatureNet", "train_feature_net", "save_feature_net", "load_feature_net"]


@dataclass
class DomainFeatureConfig:
    """Architecture of :class:`DomainFeatureNet`.

    in_channels, image_size, num_classes: the data set's. widths: channels of the three stages
    (stage 2 and 3 halve the resolution). spatial_channels: stage-2 channels kept for the
    spatial features -> (image_size / 2)^2 * spatial_channels features.
    """

    in_channels: int
    image_size: int
    num_classes: int
    widths: tuple = (32, 64, 128)
    spatial_channels: int = 4

    def __post_init__(self):
        self.widths = tuple(self.widths)
        if len(self.widths) != 3 or any(w % 8 for w in self.widths):
            raise ValueError(f"widths must be three multiples of 8 (GroupNorm uses 8 groups), got {self.widths}.")
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two 2x down-samplings), got {self.image_size}.")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 to train a classifier, got {self.num_classes}.")
        if not 1 <= self.spatial_channels <= self.widths[1]:
            raise ValueError(f"spatial_channels must be in [1, {self.widths[1]}], got {self.spatial_channels}.")


def _block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
    )


class DomainFeatureNet(nn.Module):
    """Three conv stages (H, H/2, H/4) -> global average pool -> linear classifier.

    forward(x [N, C, H, W] in [-1, 1]) -> logits [N, num_classes].
    """

    def __init__(self, config: DomainFeatureConfig):
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        self.stage1 = _block(config.in_channels, w1)
        self.stage2 = _block(w1, w2)
        self.stage3 = _block(w2, w3)
        self.fc = nn.Linear(w3, config.num_classes)

    def _check_input(self, x):
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or tuple(x.shape[-2:]) != (c.image_size, c.image_size):
            raise ValueError(
                f"this feature network was trained on images [N, {c.in_channels}, {c.image_size}, {c.image_size}], "
                f"got shape {tuple(x.shape)}; evaluate samples of the data set it was trained on."
            )
        if x.dtype == torch.uint8:
            raise ValueError("got uint8 images; convert to float in [-1, 1] first: x.float() / 127.5 - 1.")

    def _features(self, x):
        self._check_input(x)
        h = self.stage1(x.float())
        h2 = self.stage2(F.avg_pool2d(h, 2))
        pool = self.stage3(F.avg_pool2d(h2, 2)).mean((2, 3))
        return pool, h2

    def forward(self, x):
        return self.fc(self._features(x)[0])

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images [N, C, H, W] in [-1, 1] -> dict: ``pool`` [N, widths[2]], ``spatial``
        [N, (H/2)^2 * spatial_channels], ``logits`` [N, K], ``probs`` [N, K]."""
        was_training = self.training
        self.eval()
        pool, h2 = self._features(x)
        logits = self.fc(pool)
        self.train(was_training)
        return {
            "pool": pool,
            "spatial": spatial_features(h2, self.config.spatial_channels),
            "logits": logits,
            "probs": logits.softmax(1),
        }


def train_feature_net(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
    **config_kwargs,
) -> DomainFeatureNet:
    """Train a :class:`DomainFeatureNet` classifier with cross-entropy and AdamW.

    Args:
        images: [N, C, H, W] float in [-1, 1] (square, H a multiple of 4). labels: [N] int64.
        num_classes: defaults to labels.max() + 1. config_kwargs: widths, spatial_channels.
        seed: the same seed, data and torch build give the same weights.
    Returns:
        the trained network in eval mode; ``net.train_accuracy`` holds the final training accuracy.
    """
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square [N, C, H, H] floats in [-1, 1], got shape {tuple(images.shape)}.")
    if not images.is_floating_point() or images.min() < -1.001 or images.max() > 1.001:
        raise ValueError("images must be floats in [-1, 1] (gcg.data's convention); rescale uint8 with x / 127.5 - 1.")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [N] = [{images.shape[0]}] integers, got shape {tuple(labels.shape)}.")
    labels = labels.long()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    config = DomainFeatureConfig(images.shape[1], images.shape[-1], num_classes, **config_kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainFeatureNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = images.shape[0]
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    from tqdm.auto import tqdm

    net.train()
    correct = 0
    for _ in tqdm(range(epochs), desc="training feature net", disable=not progress):
        perm = torch.randperm(n, generator=g)
        correct = 0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            logits = net(images[idx].float())
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == labels[idx]).sum())
    net.eval()
    net.train_accuracy = correct / n
    return net


def save_feature_net(net: DomainFeatureNet, path: str | os.PathLike) -> None:
    """Write the config and weights atomically (temp file + os.replace)."""
    tmp = f"{path}.tmp"
    torch.save({"kind": "domain_feature_net", "config": asdict(net.config), "state_dict": net.state_dict()}, tmp)
    os.replace(tmp, path)


def load_feature_net(path: str | os.PathLike, device="cpu") -> DomainFeatureNet:
    """Load a network written by :func:`save_feature_net`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"domain feature network {str(path)!r} does not exist; train one with "
            "gcg.features.train_feature_net(images, labels) and save it with save_feature_net(net, path)."
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != "domain_feature_net":
        raise ValueError(f"{path} was not written by gcg.features.save_feature_net.")
    net = DomainFeatureNet(DomainFeatureConfig(**payload["config"]))
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval()
