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
    """Load a network written by :func:`save_feature_net`; a missing, truncated or foreign file
    raises a one-line error saying how to build one."""
    build = (
        "build one with python -m gcg.features --dataset NAME --out PATH (in Python: "
        "train_feature_net + save_feature_net)"
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"domain feature network {str(path)!r} does not exist; {build}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, random bytes: torch raises many types
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"{path} is not a readable domain feature network (truncated, or another kind of "
                         f"file: {type(exc).__name__}: {reason}); {build}.") from None
    if not isinstance(payload, dict) or payload.get("kind") != "domain_feature_net":
        raise ValueError(f"{path} was not written by gcg.features.save_feature_net; {build}.")
    try:
        net = DomainFeatureNet(DomainFeatureConfig(**payload["config"]))
        net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"{path}: damaged domain feature network ({type(exc).__name__}: {reason}); {build}.") from None
    return net.to(device).eval()


# ---------------------------------------------------------------- command line
def _training_data(args):
    """(images [N, C, H, W] float in [-1, 1], labels [N]) from --dataset or --images."""
    import numpy as np

    from gcg.cli import UsageError, read_npz

    if args.images:
        data = read_npz(args.images, "--images")
        if "arr_0" not in data or "arr_1" not in data:
            raise UsageError(f"--images {args.images} needs arr_0 (uint8 images NHWC) and arr_1 (class labels), "
                             f"got keys {sorted(data)}; the classifier learns from the labels")
        arr = data["arr_0"]
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise UsageError(f"--images {args.images}: arr_0 must be uint8 images [N, H, W, C], got "
                             f"{arr.dtype} {arr.shape}")
        images = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return images, torch.as_tensor(data["arr_1"]).long().flatten()
    from gcg.data import make_dataset

    dataset = make_dataset(args.dataset, data_dir=args.data_dir, image_size=args.image_size, split="train")
    if hasattr(dataset, "as_tensors"):
        images, labels = dataset.as_tensors()
    else:
        pairs = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([torch.as_tensor(x) for x, _ in pairs])
        labels = torch.as_tensor([int(y) for _, y in pairs])
    if images.ndim != 4:
        raise UsageError(f"--dataset {args.dataset} holds vectors {tuple(images.shape[1:])}, not images; "
                         "the feature network is for image data sets")
    return images.float(), torch.as_tensor(labels).long()


def build_parser():
    from gcg.cli import ArgumentParser, add_threads_argument, int_list, positive_int

    p = ArgumentParser(prog="python -m gcg.features",
                       description="Train the domain feature network that python -m gcg.evaluate "
                                   "--features domain:PATH scores samples with, and save it to PATH.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a gcg.data set name (e.g. digits, glyphs, photo-patches); "
                                          "its training split")
    source.add_argument("--images", metavar="NPZ", help="labelled images: an .npz with arr_0 (uint8 NHWC) "
                                                        "and arr_1 (labels)")
    p.add_argument("--out", required=True, help="where to write the network (e.g. runs/digits/features.pt)")
    p.add_argument("--data-dir", help="for data sets on disk (imagenet64, image-folder, ...)")
    p.add_argument("--image-size", type=positive_int, help="default: the data set's native size")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--widths", type=int_list, default=None,
                   help="channels of the three stages, multiples of 8 (default 32,64,128)")
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    """``python -m gcg.features``; user errors print one line and return 2 (`gcg.cli.run`)."""
    from gcg.cli import run

    return run("gcg.features", _main, argv)


def _main(argv) -> int:
    from gcg.cli import UsageError, check_output_file, set_threads

    args = build_parser().parse_args(argv)
    out = check_output_file(args.out, "--out")
    kwargs = {} if args.widths is None else {"widths": tuple(args.widths)}
    try:
        DomainFeatureConfig(1, 8, 2, **kwargs)  # checks --widths before the work
    except ValueError as exc:
        raise UsageError(f"--widths {','.join(map(str, args.widths))}: {exc}") from None
    set_threads(args.threads)
    images, labels = _training_data(args)
    net = train_feature_net(images, labels, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                            progress=not args.no_progress, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_feature_net(net, out)
    c = net.config
    print(f"gcg.features: wrote {out} ({c.num_classes} classes, images {c.in_channels}x{c.image_size}x"
          f"{c.image_size}, training accuracy {net.train_accuracy:.3f}); score samples with\n"
          f"  python -m gcg.evaluate REF SAMPLES --features domain:{out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
