"""The FID Inception-v3 network in PyTorch (Szegedy et al. 2016; as frozen in TensorFlow's
``inception-2015-12-05`` graph that FID, sFID and IS are defined with).

One forward pass gives the three feature sets the metrics need (:meth:`FIDInceptionV3.extract`):

- ``pool``: the 2048-d ``pool_3`` features (global average pool after ``Mixed_7c``) -> FID,
  precision/recall (Heusel et al. 2017; Kynkäänniemi et al. 2019);
- ``spatial``: TensorFlow's ``mixed_6/conv`` = the ReLU output of the 1x1 branch of the 4th
  17x17 block (``Mixed_6d.branch1x1``, 192 channels), of which the ADM evaluator keeps the first
  7 channels -> 17 * 17 * 7 = 2023 features -> sFID (Nash et al. 2021; Dhariwal & Nichol 2021);
- ``logits``: ``pool @ fc.weight.T`` over the graph's 1008 classes *without* the bias, as the
  original Inception-Score code and the ADM evaluator do (``softmax/logits/MatMul``) -> IS.

It differs from torchvision's ImageNet Inception-v3 in the ways the 2015 graph does: 1008
classes, average pools that exclude padding, and a *max* pool in the pool branch of ``Mixed_7c``.

Preprocessing (``preprocess=``), the one place where published evaluators disagree:

- ``"adm"`` (default): what the TensorFlow graph itself does to its ``ExpandDims:0`` input, so
  what ADM's ``evaluations/evaluator.py`` (the FID/sFID/IS/precision/recall of Dhariwal & Nichol
  2021's tables and of papers that report with its reference batches), the original TF FID code
  and torch-fidelity compute: TF1's legacy bilinear resize to 299x299 (:func:`resize_bilinear_tf1`)
  of pixels u in [0, 255], then ``(u - 128) / 128``.
- ``"pytorch-fid"``: what pytorch-fid does (papers that state they used it): PyTorch's bilinear
  resize with half-pixel centres, then ``u / 127.5 - 1``. Its pool features differ from the
  graph's, enough to move the last digits of a published FID; never compare numbers across modes.

Weights are not bundled and cannot be downloaded at run time here: pass a file you fetched
yourself to :func:`load_fid_inception`. Both ports of the TF graph that users hold load as they
are: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` (module names of torchvision's Inception3:
``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight`` [1008,
2048]; BatchNorm step counters optional).
"""

from __future__ import annotations

import os
import pickle
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

from gcg.metrics import spatial_features

__all__ = [
    "FIDInceptionV3",
    "load_fid_inception",
    "resize_bilinear_tf1",
    "PREPROCESS_MODES",
    "INCEPTION_WEIGHTS_ENV",
    "WEIGHTS_HELP",
]

# mode -> the evaluator it reproduces (for messages and docs)
PREPROCESS_MODES = {
    "adm": "TF graph preprocessing as in ADM's evaluator.py: TF1 bilinear resize, (u - 128) / 128",
    "pytorch-fid": "pytorch-fid's preprocessing: PyTorch bilinear resize, u / 127.5 - 1",
}

INCEPTION_WEIGHTS_ENV = "GCG_INCEPTION_WEIGHTS"
WEIGHTS_HELP = (
    "The FID Inception-v3 weights are not shipped with gcg and cannot be downloaded here. On a "
    "machine with internet, download pt_inception-2015-12-05-6726825d.pth (the pytorch-fid port "
    "of TensorFlow's inception-2015-12-05 graph, from the pytorch-fid GitHub releases; torch-fidelity's "
    "weights-inception-2015-12-05-6726825d.pth works too) and pass "
    f"its path (--inception-weights PATH, or the {INCEPTION_WEIGHTS_ENV} environment variable). "
    "Offline, use a gcg-trained domain feature network instead (gcg.features, --features domain:PATH)."
)


def check_preprocess(preprocess: str) -> str:
    """Return ``preprocess`` if it names a mode of :data:`PREPROCESS_MODES`, else raise ValueError."""
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(
            f"preprocess must be 'adm' (ADM's evaluator, the TF graph) or 'pytorch-fid', got {preprocess!r}."
        )
    return preprocess


def _tf1_sampling(in_size: int, out_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source pixels and weights of TF1's legacy bilinear resize along one axis.

    Output pixel j reads the source at s_j = j * (in_size / out_size) (float32, as TF computes it):
    no half-pixel centres, so output 0 is source pixel 0 exactly and the last outputs clamp to the
    last source pixel. Returns (lower [out], upper [out], fraction s_j - lower [out]).
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lower = src.floor()
    frac = src - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower.to(device), upper.to(device), frac.to(device)


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``tf.compat.v1.image.resize_bilinear(x, size, align_corners=False)`` (half_pixel_centers=False),
    the resize inside the ``inception-2015-12-05`` graph.

    Along each axis output j interpolates the source at j * in / out between its floor and the
    next pixel (clamped at the border), rows after columns as TF does. No antialiasing.

    Args:
        x: [N, C, H, W] float images (any range).
        size: (out_H, out_W).
    Returns:
        [N, C, out_H, out_W], same dtype as x.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected float images [N, C, H, W], got {tuple(x.shape)} {x.dtype}.")
    out_h, out_w = size
    y0, y1, fy = _tf1_sampling(x.shape[-2], out_h, x.device)
    x0, x1, fx = _tf1_sampling(x.shape[-1], out_w, x.device)
    fx, fy = fx.to(x.dtype), fy.to(x.dtype)
    left, right = x.index_select(-1, x0), x.index_select(-1, x1)
    rows = left + (right - left) * fx  # [N, C, H, out_W]
    top, bottom = rows.index_select(-2, y0), rows.index_select(-2, y1)
    return top + (bottom - top) * fy[:, None]


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, as in the TF graph) -> ReLU."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    # TF's 3x3 'SAME' average pool divides by the number of valid (unpadded) pixels
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block ('mixed', 'mixed_1', 'mixed_2'): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_ch, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction ('mixed_3')."""

    def __init__(self, in_ch):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions ('mixed_4' ... 'mixed_7')."""

    def __init__(self, in_ch, channels_7x7):
        super().__init__()
        c = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c, 1)
        self.branch7x7_2 = BasicConv2d(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c, 1)
        self.branch7x7dbl_2 = BasicConv2d(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x, return_1x1=False):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        out = torch.cat([b1, b7, bd, self.branch_pool(_avg_pool(x))], 1)
        return (out, b1) if return_1x1 else out


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction ('mixed_8')."""

    def __init__(self, in_ch):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3 / 3x1 branches ('mixed_9', 'mixed_10'). The 2015 graph uses an
    average pool in the pool branch of the first and a max pool in the second (``max_pool``)."""

    def __init__(self, in_ch, max_pool=False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(bd),
                self.branch3x3dbl_3b(bd),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID graph. Use :meth:`extract`; weights via :func:`load_fid_inception`.

    Args:
        resize_input: bilinearly resize inputs to 299x299 (the network's native size; the
            17x17 spatial map of sFID exists only at 299).
        spatial_channels: channels of ``mixed_6/conv`` kept for sFID (7, as in the ADM evaluator).
        preprocess: ``"adm"`` (the TF graph's resize and scaling, as ADM's evaluator.py: use it
            to compare with the ADM papers' tables) or ``"pytorch-fid"`` (as pytorch-fid); see
            :meth:`network_input`.
    """

    num_classes = 1008
    input_size = 299

    def __init__(self, resize_input: bool = True, spatial_channels: int = 7, preprocess: str = "adm"):
        super().__init__()
        self.resize_input = resize_input
        self.preprocess = check_preprocess(preprocess)
        self.spatial_channels = spatial_channels
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, self.num_classes)
        self.eval()

    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> "FIDInceptionV3":
        """Random He-normal weights (std sqrt(2 / fan_in), He et al. 2015) that keep activations O(1), for
        exercising the pipeline without the real weights file. The features are meaningless."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) / 2048**0.5)
        self.fc.bias.zero_()
        return self

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W] in [-1, 1], got shape {tuple(x.shape)}.")
        if x.dtype == torch.uint8:
            raise ValueError("got uint8 images; convert to float in [-1, 1] first: x.float() / 127.5 - 1.")
        if not self.resize_input and min(x.shape[-2:]) < 75:
            raise ValueError(f"Inception-v3 needs at least 75x75 inputs, got {tuple(x.shape[-2:])}; use resize_input=True.")

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the first convolution sees, for images x [N, C, H, W] in [-1, 1] (x = u / 127.5 - 1
        for pixels u in [0, 255]; C = 1 is repeated to RGB). Returns [N, 3, 299, 299] float32
        (or [N, 3, H, W] with ``resize_input=False``):

        - ``"adm"``: u resized by :func:`resize_bilinear_tf1`, then (u - 128) / 128, the graph's
          ``Sub`` and ``Mul(0.0078125)`` nodes; u = 0, 128, 255 -> -1, 0, 127/128.
        - ``"pytorch-fid"``: x resized by ``F.interpolate(bilinear, align_corners=False)``
          (half-pixel centres); u = 0, 255 -> -1, 1.
        """
        self._check_input(x)
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = (self.input_size, self.input_size)
        resize = self.resize_input and tuple(x.shape[-2:]) != size
        if self.preprocess == "pytorch-fid":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False) if resize else x
        u = (x + 1) * 127.5  # back to the pixel values the TF graph is fed
        if resize:
            u = resize_bilinear_tf1(u, size)
        return (u - 128) / 128

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of images x [N, C, H, W] in [-1, 1] (C = 1 is repeated to RGB), after
        :meth:`network_input`.

        Returns a dict of float32 tensors: ``pool`` [N, 2048], ``spatial``
        [N, h * w * spatial_channels] (2023 at 299x299), ``logits`` [N, 1008] (bias-free, for IS).
        """
        x = self.network_input(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        x, mixed_6_conv = self.Mixed_6d(x, return_1x1=True)  # TF 'mixed_6/conv' (post-ReLU)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean((2, 3))  # TF 'pool_3'
        return {
            "pool": pool,
            "spatial": spatial_features(mixed_6_conv, self.spatial_channels),
            "logits": pool @ self.fc.weight.T,
        }

    def forward(self, x):
        """Pool3 features [N, 2048] of images in [-1, 1]."""
        return self.extract(x)["pool"]


def load_fid_inception(path: str | os.PathLike | None = None, device="cpu", **kwargs) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load weights from a user-supplied state-dict file.

    Args:
        path: a ``torch.save``-d state dict of the TF graph's weights: pytorch-fid's
            ``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's
            ``weights-inception-2015-12-05-6726825d.pth`` (same key names; a ``{"state_dict": ...}``
            wrapper is unwrapped); None reads the ``GCG_INCEPTION_WEIGHTS`` environment variable.
        **kwargs: for :class:`FIDInceptionV3` (``preprocess="adm"`` or ``"pytorch-fid"``, ...).
    Raises:
        FileNotFoundError with instructions when no file is given or it does not exist;
        ValueError for a file that is not a tensor state dict (TensorFlow's ``.pb`` graph, a
        pickled module), or naming the first missing / unexpected / mis-shaped tensor.
    """
    path = path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not path:
        raise FileNotFoundError("No Inception weights file given. " + WEIGHTS_HELP)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights file {str(path)!r} does not exist. " + WEIGHTS_HELP)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        if zipfile.is_zipfile(path):  # torch.save's format, but with pickled objects beside tensors
            raise ValueError(
                f"{path} holds pickled Python objects, not only tensors (a whole model saved with "
                "torch.save(model)?); save model.state_dict() instead and pass that file."
            ) from None
        raise ValueError(
            f"{path} is not a PyTorch state-dict file. TensorFlow's classify_image_graph_def.pb "
            "cannot be read; use its PyTorch port. " + WEIGHTS_HELP
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors. " + WEIGHTS_HELP)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    model = FIDInceptionV3(**kwargs)
    expected = model.state_dict()
    # BatchNorm's step counter is irrelevant at inference and absent from older files
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    wanted = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not an FID Inception-v3 state dict: "
            + (f"missing {missing[0]!r} ({len(missing)} missing in all)" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {unexpected[0]!r} ({len(unexpected)} unexpected in all)" if unexpected else "")
            + ". " + WEIGHTS_HELP
        )
    for key in sorted(wanted):
        if tuple(state[key].shape) != tuple(expected[key].shape):
            hint = (
                " This looks like torchvision's ImageNet Inception-v3 (1000 classes), which is not the FID network."
                if key.startswith("fc.") and state[key].shape[0] == 1000
                else ""
            )
            raise ValueError(
                f"{key}: file has shape {tuple(state[key].shape)}, the FID Inception-v3 expects "
                f"{tuple(expected[key].shape)}.{hint} " + WEIGHTS_HELP
            )
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()
