"""Training checkpoints: atomic save, verified load, and ``load_model`` rebuilding a network from the file alone.

A checkpoint is a dict written by ``save_checkpoint`` (``torch.save``) that holds tensors and plain
Python values only, so ``torch.load(path, weights_only=True)`` reads it without unpickling objects:
  "format", "format_version"  "gcg-checkpoint", 2
  "model_config"     network config dict (``gcg.nn.config`` ``to_dict()``, with "kind": "unet" | "classifier")
  "diffusion_config" ``gcg.diffusion.DiffusionConfig`` fields as a dict
  "model"            the trained weights (state dict)
  "ema"              {rate: state dict} exponential moving averages
  "optimizer", "scaler", "step", "rng", "schedule_sampler", "train_config"  (written by the trainer)
  "integrity"        {"algorithm": "sha256", "tensors": {path: digest}, "values": digest}: a SHA-256
                     of every tensor's bytes and one of everything else, checked by ``load_checkpoint``
An EMA-only export for sharing weights (``python -m gcg.export``) is a directory holding
``model.safetensors`` and ``config.json``; ``load_model`` reads both kinds (``load_cascade_stage``: as
a stage of a ``gcg.cascade.Cascade``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from gcg.cascade import CascadeStage
from gcg.diffusion import DiffusionConfig
from gcg.nn import config_from_dict, create_model, load_state_dict_checked

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")
# temp files of an unfinished write: save_checkpoint's ".NAME.tmp-PID", gcg.train.save's ".checkpoint.pt.link-STEP"
TEMP_PATTERN = re.compile(r"^\.checkpoint(_\d+)?\.pt\.(tmp|link)-\d+$")
FORMAT, FORMAT_VERSION = "gcg-checkpoint", 2
_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file, the problem and the fix."""


# ----------------------------------------------------------------------------- integrity
def _walk(obj, path=""):
    """(path, value) of every tensor and plain leaf of a nested dict / list / tuple."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _walk(value, f"{path}/{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{path}/{i}" if path else str(i))
    else:
        yield path, obj


def _check_plain(obj, path="payload") -> None:
    """Raise TypeError naming the first value that ``torch.load(weights_only=True)`` could not read."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float)):
                raise TypeError(f"checkpoint key {key!r} at {path} is a {type(key).__name__}; use str/int/float keys")
            _check_plain(value, f"{path}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{path}/{i}")
    elif not isinstance(obj, (torch.Tensor, *_PLAIN)):
        raise TypeError(f"checkpoint value {path} is a {type(obj).__module__}.{type(obj).__name__}; store "
                        "tensors and plain Python values only, so torch.load(weights_only=True) reads the file")


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's bytes (any dtype, any device)."""
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()


def _skeleton(obj):
    """The payload with each tensor replaced by its dtype and shape (what `values` digests)."""
    if isinstance(obj, dict):
        return {k: _skeleton(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_skeleton(v) for v in obj)
    if isinstance(obj, torch.Tensor):
        return ("tensor", str(obj.dtype), tuple(obj.shape))
    return obj


def integrity_record(payload: dict) -> dict:
    """{"algorithm": "sha256", "tensors": {path: digest}, "values": digest of the non-tensor content}."""
    body = {k: v for k, v in payload.items() if k != "integrity"}
    tensors = {path: tensor_digest(v) for path, v in _walk(body) if isinstance(v, torch.Tensor)}
    values = hashlib.sha256(repr(_skeleton(body)).encode()).hexdigest()
    return {"algorithm": "sha256", "tensors": tensors, "values": values}


def verify_payload(payload: dict, path) -> None:
    """Check the stored digests and that the weights ("model", "ema") are finite; raise CheckpointError."""
    stored = payload.get("integrity")
    if not isinstance(stored, dict) or stored.get("algorithm") != "sha256":
        raise CheckpointError(f"checkpoint {path} has no integrity record; rewrite it with "
                              f"`python -m gcg.checkpoint upgrade {path}` if you trust it")
    now = integrity_record(payload)
    bad = [p for p in sorted(set(now["tensors"]) | set(stored["tensors"]))
           if now["tensors"].get(p) != stored["tensors"].get(p)]
    if bad:
        raise CheckpointError(f"checkpoint {path} is corrupt: tensor {bad[0]} does not match its SHA-256 "
                              f"checksum ({len(bad)} tensor(s) changed since the file was written); "
                              "use an earlier checkpoint_*.pt")
    if now["values"] != stored["values"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its configs or counters do not match their "
                              "SHA-256 checksum; use an earlier checkpoint_*.pt")
    check_finite({"model": payload.get("model") or {}, "ema": payload.get("ema") or {}}, path)


def check_finite(weights: dict, path) -> None:
    """Raise CheckpointError naming the first floating-point tensor with NaN or inf entries."""
    for name, value in _walk(weights):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {path} holds non-finite weights ({name} has NaN/inf entries); "
                                  "training diverged before this save: use an earlier checkpoint_*.pt")


# ----------------------------------------------------------------------------- save / load
def _to_cpu(obj):
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj


def save_checkpoint(path, payload: dict) -> Path:
    """Write `payload` (tensors and plain values) to `path` atomically, with format tag and checksums.

    A temp file in the same directory, fsync, os.replace: a crash while writing leaves any previous
    file at `path` untouched (the rename is atomic on POSIX and Windows when source and target share a
    file system). Raises TypeError for a value `torch.load(weights_only=True)` could not read back.
    """
    path = Path(path)
    payload = _to_cpu({**payload, "format": FORMAT, "format_version": FORMAT_VERSION})
    payload.pop("integrity", None)
    _check_plain(payload)
    payload["integrity"] = integrity_record(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems do not allow fsync on directories
    return path


def pickle_text(path) -> str:
    """The text of a torch zip file's pickle (read as bytes, never unpickled); '' if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            return archive.read(name).decode("latin-1")
    except (OSError, zipfile.BadZipFile, StopIteration, KeyError):
        return ""


def load_checkpoint(path, map_location="cpu", verify: bool = True) -> dict:
    """Load a checkpoint dict with ``torch.load(weights_only=True)`` and verify it.

    Every problem raises one clear error naming the file and the fix: missing (FileNotFoundError),
    truncated or not a torch file, a file that needs unpickling Python objects (an old gcg checkpoint
    or a foreign file), not a gcg checkpoint, corrupt (SHA-256 mismatch), non-finite weights
    (CheckpointError, a ValueError). verify=False skips the checksums and the finiteness check.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        raise CheckpointError(f"{path} is a gcg export (config.json + model.safetensors), not a training "
                              "checkpoint: load it with gcg.checkpoint.load_model")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (train one with `python -m gcg.train "
                                "--preset NAME --out-dir DIR`; checkpoints are DIR/checkpoint_*.pt)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        needed = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if needed is None:  # not a pickle at all
            raise CheckpointError(f"checkpoint {path} is unreadable (not a PyTorch file); it may be "
                                  "truncated: use an earlier checkpoint_*.pt") from None
        pickled = pickle_text(path)
        if "model_config" in pickled and "train_config" in pickled:
            raise CheckpointError(
                f"{path} is a gcg checkpoint in an older format (it pickles {needed[1]}); if you trust "
                f"it, convert it once: python -m gcg.checkpoint upgrade {path}") from None
        raise CheckpointError(f"{path} needs unpickling Python objects ({needed[1]}), which gcg never does "
                              "(it could run code); it is not a gcg checkpoint, whose files hold tensors "
                              "and plain values only") from None
    except Exception as exc:  # truncated / not a torch file
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {first}); it may "
                              "be truncated: use an earlier checkpoint_*.pt") from None
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise CheckpointError(f"{path} is not a gcg training checkpoint (expected a dict with 'model' and "
                              "'model_config'); for OpenAI's released weights use "
                              "gcg.convert.load_openai_checkpoint")
    version = payload.get("format_version")
    if payload.get("format") != FORMAT or not isinstance(version, int):
        raise CheckpointError(f"{path} is a gcg checkpoint in an older format (no format tag or checksums); "
                              f"if you trust it, convert it once: python -m gcg.checkpoint upgrade {path}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version}, newer than this gcg reads "
                              f"({FORMAT_VERSION}); update gcg")
    if verify:
        verify_payload(payload, path)
    return payload


def list_checkpoints(directory) -> list[Path]:
    """The ``checkpoint_<step>.pt`` files in ``directory``, oldest step first (temp files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory) -> Path | None:
    """The newest complete checkpoint of a run directory, or None.

    ``checkpoint_<step>.pt`` files appear only by an atomic rename, so each one is complete; the
    highest step wins even when a kill fell between that rename and re-linking ``checkpoint.pt``
    (which then still names the previous step). ``checkpoint.pt`` is the answer only when no
    numbered file exists.
    """
    found = list_checkpoints(directory)
    if found:
        return found[-1]
    link = Path(directory) / "checkpoint.pt"
    return link if link.is_file() else None


def remove_stale_temp_files(directory) -> list[tuple[Path, int]]:
    """Delete the temp files of unfinished checkpoint writes in ``directory``; returns (path, bytes).

    Called by the one process that writes checkpoints into a run directory (rank 0), when it starts
    and before its own first write. Every temp file there then belongs to an earlier writer, so
    all of them go, whatever their PID: a PID test would be wrong exactly when it matters (after
    pre-emption the job restarts on another node or in a fresh container, where the old PID means
    nothing or names an unrelated live process). Two runs writing into one directory at once is
    not supported in any case (they would also prune each other's checkpoints).
    """
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if TEMP_PATTERN.match(p.name) and p.is_file():
                size = p.stat().st_size
                p.unlink(missing_ok=True)
                removed.append((p, size))
    return removed


def checkpoint_path(directory, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step:07d}.pt"


def build_model(model_config: dict) -> torch.nn.Module:
    """Instantiate the network described by a config dict or config object (no weights)."""
    if not isinstance(model_config, dict):
        model_config = model_config.to_dict()
    return create_model(config_from_dict(dict(model_config)))


def build_diffusion(diffusion_config: dict, timestep_respacing=None):
    return DiffusionConfig(**diffusion_config).build(timestep_respacing=timestep_respacing)


def is_export(path) -> bool:
    """True for a ``gcg.export`` directory, its config.json or its model.safetensors."""
    path = Path(path)
    return (path.is_dir() and (path / "config.json").is_file()) or path.suffix == ".safetensors" or \
        (path.name == "config.json" and (path.parent / "model.safetensors").exists())


def load_model(path, use_ema: bool = True, ema_rate: float | None = None, device="cpu"):
    """Rebuild `(model, diffusion)` from a checkpoint's stored configs alone; model in eval mode.

    path: a training checkpoint (``checkpoint.pt``) or a ``gcg.export`` directory (model.safetensors
    + config.json; it holds one set of weights, so `use_ema` / `ema_rate` are not used).
    use_ema: load the EMA weights (rate ``ema_rate``, default the first stored rate) when the
    checkpoint has any, else the raw weights. ``diffusion`` is the GaussianDiffusion the network (or
    noise-aware classifier) was trained with, or None when the checkpoint stores no diffusion config.
    """
    if is_export(path):
        from gcg.export import read_export

        model_config, diffusion_cfg, state = read_export(path)
    else:
        payload = load_checkpoint(path)
        model_config, diffusion_cfg = payload["model_config"], payload.get("diffusion_config")
        state = payload["model"]
        emas = payload.get("ema") or {}
        if use_ema and emas:
            if ema_rate is None:
                ema_rate = next(iter(emas))
            if ema_rate not in emas:
                raise KeyError(f"{path} has no EMA at rate {ema_rate}; stored rates: {list(emas)}")
            state = emas[ema_rate]
    model = build_model(model_config)
    load_state_dict_checked(model, state)
    model.to(device).eval()
    diffusion = build_diffusion(diffusion_cfg) if diffusion_cfg else None
    return model, diffusion


def load_cascade_stage(path, use_ema: bool = True, device="cpu", **stage_kwargs) -> CascadeStage:
    """A `gcg.cascade.CascadeStage` whose model and diffusion come from a checkpoint or export
    (`load_model`). ``shape`` defaults to the model's: (C, size, size), or (D,) for an MLP of the
    toys; the other keywords go to `CascadeStage` (sampler, steps, aug_level, mode, ...)."""
    model, diffusion = load_model(path, use_ema=use_ema, device=device)
    if "shape" not in stage_kwargs:
        cfg = model.config
        stage_kwargs["shape"] = (cfg.dim,) if cfg.kind == "mlp" else (cfg.in_channels, cfg.image_size, cfg.image_size)
    return CascadeStage(model=model, diffusion=diffusion, **stage_kwargs)


# ----------------------------------------------------------------------------- old files
def upgrade_payload(payload: dict) -> dict:
    """A format-1 checkpoint (numpy RNG state pickled as numpy objects) -> plain values."""

    def convert(obj):
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            if len(obj) == 5 and isinstance(obj[0], str) and obj[0] == "MT19937":  # np.random.get_state()
                return {"keys": torch.from_numpy(np.asarray(obj[1]).astype(np.int64)), "pos": int(obj[2]),
                        "has_gauss": int(obj[3]), "cached_gaussian": float(obj[4])}
            return type(obj)(convert(v) for v in obj)
        if isinstance(obj, np.ndarray):
            return torch.from_numpy(obj.copy())
        if isinstance(obj, np.generic):
            return obj.item()
        return obj

    out = convert({k: v for k, v in payload.items() if k != "integrity"})
    sampler = out.get("schedule_sampler")
    if isinstance(sampler, dict) and "loss_history" not in sampler:
        out["schedule_sampler"] = {}  # a uniform sampler has no state
    return out


def upgrade_checkpoint(src, dst=None) -> Path:
    """Rewrite an older gcg checkpoint in the current format (``torch.load(weights_only=False)``:
    run it on files you trust only). dst None = in place (atomically)."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {src} not found")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{src} is unreadable ({type(exc).__name__}); it cannot be upgraded") from None
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise CheckpointError(f"{src} is not a gcg checkpoint (expected a dict with 'model' and 'model_config')")
    return save_checkpoint(dst or src, upgrade_payload(payload))


def main(argv=None) -> int:
    """``python -m gcg.checkpoint verify PATH...`` / ``upgrade PATH [--out NEW]``."""
    parser = argparse.ArgumentParser(prog="python -m gcg.checkpoint",
                                     description="Verify gcg checkpoints, or convert an older one.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check format, SHA-256 checksums and finite weights")
    verify.add_argument("paths", nargs="+")
    upgrade = sub.add_parser("upgrade", help="rewrite an older-format checkpoint you trust")
    upgrade.add_argument("path")
    upgrade.add_argument("--out", help="write here instead of replacing PATH")
    args = parser.parse_args(argv)
    try:
        if args.command == "upgrade":
            out = upgrade_checkpoint(args.path, args.out)
            load_checkpoint(out)
            print(f"gcg.checkpoint: {out} rewritten in format {FORMAT_VERSION} (loads with weights_only=True)")
        else:
            for p in args.paths:
                payload = load_checkpoint(p)
                n = len(payload["integrity"]["tensors"])
                print(f"gcg.checkpoint: {p}: OK (step {payload.get('step', '?')}, {n} tensors verified)")
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"gcg.checkpoint: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
