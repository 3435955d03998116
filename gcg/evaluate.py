"""Evaluate samples against reference images: IS, FID, sFID, precision, recall (and KID).

    python -m gcg.evaluate REF SAMPLES [--features inception|domain:PATH] [--inception-weights W]
                           [--preprocess adm|pytorch-fid]
    python -m gcg.evaluate REF --save-ref ref_stats.npz        # compute and keep reference statistics

REF and SAMPLES are each an ``.npz`` of images (``arr_0`` uint8 NHWC, optional ``arr_1`` labels, as
written by ``gcg.sample`` and the ADM reference batches) or a folder of image files; REF may also
be a statistics file written by ``--save-ref`` (keys ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` as in
the ADM reference batches, plus ``pool`` features for precision/recall).

Metrics (see :mod:`gcg.metrics` for the formulas): IS from the sample class probabilities; FID on
pool features; sFID on spatial features; precision/recall with k = 3 on pool features
(Kynkäänniemi et al. 2019), all as in the ADM evaluator (Dhariwal & Nichol 2021). With
``--features domain:PATH`` the same numbers are computed on a gcg-trained network's features and
printed as "FD (domain features)" etc.: they are not comparable to published FID.

``--preprocess`` (Inception features only) picks how images reach the network
(:class:`gcg.inception.FIDInceptionV3`): ``adm`` (default) is the TF graph's own resize and
scaling, as in ADM's ``evaluations/evaluator.py``: compare with the tables of Dhariwal & Nichol
(2021) and with papers that report with its reference batches. ``pytorch-fid`` reproduces
pytorch-fid: compare with papers that used it. Statistics files record the mode, and a file from
the other mode is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from gcg import metrics
from gcg.cli import read_npz

__all__ = [
    "load_images",
    "uint8_to_float",
    "compute_activations",
    "reference_statistics",
    "save_reference",
    "load_reference",
    "evaluate_activations",
    "build_extractor",
    "main",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


# ---------------------------------------------------------------- images in, images out


def uint8_to_float(batch: np.ndarray) -> torch.Tensor:
    """[N, H, W, C] uint8 -> [N, C, H, W] float32 in [-1, 1] (x / 127.5 - 1); the inverse of
    ``gcg.sample.to_uint8`` up to rounding."""
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _check_uint8_nhwc(arr: np.ndarray, source) -> np.ndarray:
    if arr.ndim == 3:  # [N, H, W] grayscale
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{source}: expected images [N, H, W, C] with C = 1 or 3, got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{source}: expected uint8 pixels (0..255) in NHWC layout, got {arr.dtype}; "
            "convert [-1, 1] float images with gcg.sample.to_uint8."
        )
    return arr


def load_images(path: str | os.PathLike) -> np.ndarray:
    """Images from an ``.npz`` (``arr_0`` [N, H, W, C] uint8) or a folder of image files (sorted by
    name; grayscale files stay 1-channel, others become RGB). Returns [N, H, W, C] uint8."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder.")
        arrays = []
        for f in files:
            with Image.open(f) as im:
                arrays.append(np.asarray(im if im.mode == "L" else im.convert("RGB")))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"{path}: images have different shapes {sorted(shapes)}; resize them to one size first.")
        return _check_uint8_nhwc(np.stack(arrays), path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .npz file or image folder.")
    data = read_npz(path, "images")
    if "arr_0" not in data:
        raise ValueError(f"{path}: no 'arr_0' array of images (keys: {sorted(data)}).")
    return _check_uint8_nhwc(data["arr_0"], path)


# ---------------------------------------------------------------- feature extraction


def _file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def build_extractor(features: str = "inception", inception_weights=None, device="cpu", preprocess: str | None = None):
    """Parse ``--features``: ``"inception"`` (FID Inception-v3 from a user-supplied weights file) or
    ``"domain:PATH"`` (a :mod:`gcg.features` network). Returns (extractor, name) where name
    identifies the network (kind + weights digest) and is stored with reference statistics.

    ``preprocess`` (Inception only; None = ``"adm"``): ``"adm"`` matches ADM's evaluator.py,
    ``"pytorch-fid"`` matches pytorch-fid; the extractor's ``preprocess`` attribute holds it."""
    if features == "inception":
        from gcg.inception import INCEPTION_WEIGHTS_ENV, load_fid_inception

        weights = inception_weights or os.environ.get(INCEPTION_WEIGHTS_ENV)
        net = load_fid_inception(weights, device=device, preprocess=preprocess or "adm")
        return net, f"inception:{_file_digest(weights)}"
    if preprocess is not None and features.startswith("domain:"):
        raise ValueError("--preprocess applies to --features inception only; drop it for domain:PATH features.")
    if features.startswith("domain:"):
        from gcg.features import load_feature_net

        path = features[len("domain:") :]
        net = load_feature_net(path, device=device)
        return net, f"domain:{_file_digest(path)}"
    raise ValueError(f"--features must be 'inception' or 'domain:PATH', got {features!r}.")


def compute_activations(extractor, images, batch_size: int = 64, device="cpu", progress: bool = True) -> dict[str, np.ndarray]:
    """Run a feature network over images, batch by batch.

    Args:
        extractor: an object with ``extract(x [N, C, H, W] in [-1, 1]) -> {"pool", "spatial",
            "logits"}`` (:class:`gcg.inception.FIDInceptionV3`, :class:`gcg.features.DomainFeatureNet`).
        images: [N, H, W, C] uint8 array (see :func:`load_images`), or a path to load.
    Returns:
        dict of float32 numpy arrays: ``pool`` [N, F], ``spatial`` [N, S], ``probs`` [N, K].
    """
    from tqdm.auto import tqdm

    if isinstance(images, (str, os.PathLike)):
        images = load_images(images)
    images = _check_uint8_nhwc(np.asarray(images), "images")
    out = {"pool": [], "spatial": [], "probs": []}
    for i in tqdm(range(0, len(images), batch_size), desc="features", unit="batch", disable=not progress):
        feats = extractor.extract(uint8_to_float(images[i : i + batch_size]).to(device))
        out["pool"].append(feats["pool"].float().cpu())
        out["spatial"].append(feats["spatial"].float().cpu())
        out["probs"].append(feats["logits"].float().softmax(1).cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


# ---------------------------------------------------------------- reference statistics


def reference_statistics(activations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Gaussian statistics of pool and spatial features (ADM key names ``mu``, ``sigma``, ``mu_s``,
    ``sigma_s``) plus the features themselves (``pool``, ``spatial``): precision/recall needs
    every reference point, not just the moments."""
    mu, sigma = metrics.feature_statistics(activations["pool"])
    mu_s, sigma_s = metrics.feature_statistics(activations["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s,
            "pool": activations["pool"], "spatial": activations["spatial"]}


def save_reference(path, activations: dict[str, np.ndarray], feature_network: str, preprocess: str | None = None) -> None:
    """Write :func:`reference_statistics` to an ``.npz`` (atomically), tagged with the network and,
    for Inception features, the preprocessing mode (``"adm"`` / ``"pytorch-fid"``).
    The spatial features themselves are not kept (their statistics are)."""
    stats = reference_statistics(activations)
    del stats["spatial"]
    if preprocess is not None:
        stats["preprocess"] = np.array(preprocess)
    path = str(path)
    tmp = path + ".tmp.npz"
    np.savez(tmp, feature_network=np.array(feature_network), **stats)
    os.replace(tmp, path)


def load_reference(path) -> dict:
    """Read a file written by :func:`save_reference` (or an ADM reference batch's statistics).
    ``feature_network`` and ``preprocess`` are None where the file does not say; Inception
    statistics from before modes were recorded were computed with ``"pytorch-fid"``."""
    data = read_npz(path, "reference statistics")
    missing = [k for k in ("mu", "sigma", "mu_s", "sigma_s") if k not in data]
    if missing:
        raise ValueError(f"{path}: not a statistics file, missing {missing}.")
    ref = {k: v for k, v in data.items() if k != "arr_0"}
    ref["feature_network"] = str(ref["feature_network"]) if "feature_network" in ref else None
    if "preprocess" in ref:
        ref["preprocess"] = str(ref["preprocess"])
    elif (ref["feature_network"] or "").startswith("inception"):
        ref["preprocess"] = "pytorch-fid"
    else:
        ref["preprocess"] = None
    return ref


def _is_stats_file(path) -> bool:
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return "mu" in data and "arr_0" not in data
    except Exception:  # unreadable: load_images reports why
        return False


# ---------------------------------------------------------------- the metrics


def _fd(ref, sample, key, mu_key, sigma_key):
    """Fréchet distance from reference features when held in memory, else from stored statistics."""
    dim_ref, dim = ref[mu_key].shape[0], sample[key].shape[1]
    if dim_ref != dim:
        raise ValueError(
            f"reference {key} features have dimension {dim_ref}, samples {dim}: "
            "they were computed with different feature networks."
        )
    if ref.get(key) is not None:
        return metrics.fid_from_features(ref[key], sample[key])
    return metrics.frechet_distance(ref[mu_key], ref[sigma_key], *metrics.feature_statistics(sample[key]))


def evaluate_activations(
    ref: dict, sample: dict[str, np.ndarray], k: int = 3, is_splits: int | None = None, with_kid: bool = False,
    progress: bool = False,
) -> dict:
    """All metrics from reference statistics/activations and sample activations.

    Args:
        ref: :func:`reference_statistics` output (``pool`` optional: precision/recall need it).
        sample: :func:`compute_activations` output.
        is_splits: IS chunks; None uses chunks of 5000 like the ADM evaluator (ceil(N / 5000)).
    Returns:
        dict with ``inception_score``, ``fid``, ``sfid``, ``precision``, ``recall`` (None when the
        reference holds no pool features), and ``kid`` when asked.
    """
    n = len(sample["probs"])
    splits = is_splits or max(1, math.ceil(n / 5000))
    result = {
        "num_samples": n,
        "inception_score": metrics.inception_score(sample["probs"], splits=min(splits, n), from_logits=False).mean,
        "fid": _fd(ref, sample, "pool", "mu", "sigma"),
        "sfid": _fd(ref, sample, "spatial", "mu_s", "sigma_s"),
        "precision": None,
        "recall": None,
    }
    if ref.get("pool") is not None:
        pr = metrics.precision_recall(ref["pool"], sample["pool"], k=k, progress=progress)
        result["precision"], result["recall"] = pr.precision, pr.recall
        if with_kid:
            result["kid"] = metrics.kid(ref["pool"], sample["pool"]).mean
    return result


def format_results(result: dict, feature_network: str) -> str:
    """Human-readable lines; on domain features every name says so, on Inception features the
    first line names the preprocessing mode (``result["preprocess"]``)."""
    domain = feature_network.startswith("domain")
    tag = " (domain features)" if domain else ""
    mode = result.get("preprocess")
    lines = [
        f"Feature network: {feature_network}"
        + (" -- not comparable to published FID/IS" if domain else "")
        + (f" (--preprocess {mode}: {'as ADM' if mode == 'adm' else 'as pytorch-fid'})" if mode else "")
    ]
    lines.append(f"Samples: {result['num_samples']}")
    lines.append(f"{'IS (domain classifier)' if domain else 'Inception Score'}: {result['inception_score']:.4f}")
    lines.append(f"{'FD' if domain else 'FID'}{tag}: {result['fid']:.4f}")
    lines.append(f"{'sFD' if domain else 'sFID'}{tag}: {result['sfid']:.4f}")
    for key in ("precision", "recall"):
        value = result[key]
        lines.append(f"{key.capitalize()}{tag}: " + ("n/a (reference file has no pool features)" if value is None else f"{value:.4f}"))
    if "kid" in result:
        lines.append(f"KID{tag}: {result['kid']:.6f}")
    return "\n".join(lines)


def _parser():
    from gcg.cli import ArgumentParser, add_threads_argument, positive_int

    p = ArgumentParser(prog="python -m gcg.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("ref", help="reference images (.npz with arr_0, or a folder) or a --save-ref statistics file")
    p.add_argument("samples", nargs="?", help="sample images (.npz with arr_0, e.g. from gcg.sample, or a folder)")
    p.add_argument("--features", default="inception",
                   help="'inception' (default) or 'domain:PATH' (a network from python -m gcg.features)")
    p.add_argument("--inception-weights", default=None, help="FID Inception-v3 state dict (default: $GCG_INCEPTION_WEIGHTS)")
    p.add_argument("--preprocess", choices=["adm", "pytorch-fid"], default=None,
                   help="Inception input preprocessing: 'adm' (default; the TF graph's, as ADM's evaluator.py and "
                        "its papers' tables) or 'pytorch-fid' (as pytorch-fid)")
    p.add_argument("--save-ref", default=None, help="write reference statistics of REF to this .npz")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--k", type=positive_int, default=3, help="neighbourhood size for precision/recall")
    p.add_argument("--is-splits", type=positive_int, default=None, help="IS chunks (default: chunks of 5000 as in ADM)")
    p.add_argument("--kid", action="store_true", help="also compute KID (slower)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _run(args) -> dict | None:
    progress = not args.no_progress
    extractor, name = build_extractor(args.features, args.inception_weights, args.device, args.preprocess)
    mode = getattr(extractor, "preprocess", None)  # None for domain networks
    if _is_stats_file(args.ref):
        ref = load_reference(args.ref)
        if ref["feature_network"] not in (None, name):
            raise ValueError(
                f"{args.ref} was computed with feature network {ref['feature_network']}, but you are "
                f"evaluating with {name}; recompute it with --save-ref and the same --features."
            )
        if mode is not None and ref["preprocess"] not in (None, mode):
            raise ValueError(
                f"{args.ref} was computed with --preprocess {ref['preprocess']}, but you are evaluating with "
                f"--preprocess {mode}; pass --preprocess {ref['preprocess']} or recompute it with --save-ref."
            )
        if args.save_ref:
            print(f"{args.ref} already holds statistics; nothing to save")
    else:
        ref_acts = compute_activations(extractor, args.ref, args.batch_size, args.device, progress)
        ref = reference_statistics(ref_acts)
        if args.save_ref:
            save_reference(args.save_ref, ref_acts, name, mode)
            print(f"saved reference statistics of {len(ref_acts['pool'])} images to {args.save_ref}")
    if args.samples is None:
        return None
    sample_acts = compute_activations(extractor, args.samples, args.batch_size, args.device, progress)
    result = evaluate_activations(ref, sample_acts, args.k, args.is_splits, args.kid, progress)
    result["feature_network"] = name
    if mode is not None:
        result["preprocess"] = mode
    print(format_results(result, name))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> dict | int | None:
    """CLI entry point; returns the results dict (None with only --save-ref). Bad files or
    arguments print a one-line error and return 2 (`gcg.cli.run`), checked before the work
    where possible."""
    from gcg.cli import run

    return run("gcg.evaluate", _main, argv)


def _main(argv) -> dict | None:
    from gcg.cli import UsageError, check_device, check_output_file, set_threads

    parser = _parser()
    args = parser.parse_args(argv)
    if args.samples is None and args.save_ref is None:
        raise UsageError("give SAMPLES to evaluate, or --save-ref OUT to only compute reference statistics")
    args.device = str(check_device(args.device))
    for flag in ("save_ref", "json"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), f"--{flag.replace('_', '-')}").parent.mkdir(
                parents=True, exist_ok=True)
    for path in (args.ref, args.samples):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such .npz file or image folder.")
    set_threads(args.threads)
    return _run(args)


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
