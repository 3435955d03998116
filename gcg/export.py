"""Weights for sharing: ``python -m gcg.export RUN/checkpoint.pt OUT_DIR [--ema-rate R | --raw]``.

A training checkpoint carries what resuming needs (raw weights, every EMA, the optimizer's two
moments, RNG states): about four times the weights. An export keeps one set of weights, an EMA
by default:
  OUT_DIR/model.safetensors  the state dict as stored (float32 for gcg's trainer), no pickle: reading
                             a safetensors file cannot run code
  OUT_DIR/config.json        {"format": "gcg-export", "format_version": 1, "model_config",
                             "diffusion_config", "weights": "model.safetensors", "sha256": of that
                             file, "ema_rate" (null = raw weights), "step", "source"}
``gcg.checkpoint.load_model(OUT_DIR)`` rebuilds ``(model, diffusion)`` from it (``gcg.sample`` and
``gcg.checkpoint.load_cascade_stage`` go through it too).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from gcg.checkpoint import CheckpointError, check_finite, load_checkpoint

FORMAT, FORMAT_VERSION = "gcg-export", 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_checkpoint(checkpoint, out_dir, ema_rate: float | None = None, use_ema: bool = True) -> dict:
    """Write ``out_dir/model.safetensors`` + ``out_dir/config.json`` from a training checkpoint.

    use_ema: the EMA at ``ema_rate`` (default the first stored rate; the raw weights when the
    checkpoint has no EMA, e.g. a classifier), else the raw weights. Returns
    {"weights", "config", "ema_rate", "step", "bytes", "checkpoint_bytes"}.
    """
    from safetensors.torch import save

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"export directory {out_dir} is a file; pass a directory path (it is created)")
    payload = load_checkpoint(checkpoint)
    emas = payload.get("ema") or {}
    state, rate = payload["model"], None
    if use_ema and emas:
        rate = next(iter(emas)) if ema_rate is None else float(ema_rate)
        if rate not in emas:
            raise ValueError(f"{checkpoint} has no EMA at rate {ema_rate}; stored rates: {list(emas)} "
                             "(or --raw for the raw weights)")
        state = emas[rate]
    elif ema_rate is not None:
        raise ValueError(f"{checkpoint} stores no EMA weights (rates: {list(emas)}); drop --ema-rate")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    _write_atomic(weights, lambda p: p.write_bytes(save(tensors, metadata={"format": FORMAT})))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "model_config": payload["model_config"], "diffusion_config": payload.get("diffusion_config"),
              "weights": WEIGHTS, "sha256": _file_sha256(weights), "ema_rate": rate,
              "step": payload.get("step"), "source": checkpoint.name}
    config_path = out_dir / CONFIG
    _write_atomic(config_path, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return {"weights": weights, "config": config_path, "ema_rate": rate, "step": payload.get("step"),
            "bytes": weights.stat().st_size + config_path.stat().st_size,
            "checkpoint_bytes": checkpoint.stat().st_size}


def read_export(path) -> tuple[dict, dict | None, dict]:
    """(model_config, diffusion_config or None, state dict) of an export directory (or its
    config.json / model.safetensors); checks the format, the file's SHA-256 and finite weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: an export is a directory with {CONFIG} and "
                                f"{WEIGHTS} (write one with `python -m gcg.export RUN/checkpoint.pt DIR`)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc}); re-export with python -m gcg.export") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a gcg export config (no \"format\": \"{FORMAT}\"); "
                              "write one with `python -m gcg.export RUN/checkpoint.pt DIR`")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has export format {config['format_version']}, newer than "
                              f"this gcg reads ({FORMAT_VERSION}); update gcg")
    weights = directory / config.get("weights", WEIGHTS)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found beside {config_path}; copy the whole export directory")
    if _file_sha256(weights) != config.get("sha256"):
        raise CheckpointError(f"{weights} is corrupt: its SHA-256 does not match {config_path}; "
                              "copy or export it again")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is unreadable ({exc}); copy or export it again") from None
    check_finite(state, weights)
    return config["model_config"], config.get("diffusion_config"), state


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gcg.export",
        description="Export one set of weights of a training checkpoint (an EMA by default) as "
                    "model.safetensors + config.json, for sharing; gcg.load_model(OUT_DIR) reads it.")
    parser.add_argument("checkpoint", help="a gcg training checkpoint, e.g. runs/digits/checkpoint.pt")
    parser.add_argument("out_dir", help="directory to write model.safetensors and config.json into")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--ema-rate", type=float, help="which EMA (default: the first stored rate)")
    which.add_argument("--raw", action="store_true", help="the raw (non-EMA) weights")
    args = parser.parse_args(argv)
    try:
        info = export_checkpoint(args.checkpoint, args.out_dir, ema_rate=args.ema_rate, use_ema=not args.raw)
    except (ValueError, OSError) as exc:
        print(f"gcg.export: error: {exc}", file=sys.stderr)
        return 2
    which = "raw weights" if info["ema_rate"] is None else f"EMA {info['ema_rate']}"
    print(f"gcg.export: {which} at step {info['step']} -> {info['weights']} + {info['config'].name}: "
          f"{_megabytes(info['bytes'])} (checkpoint {_megabytes(info['checkpoint_bytes'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
