"""Which precision a forward runs in, on which device, and the autocast context that runs it.

fp32 everywhere; fp16/bf16 as ``torch.autocast`` (convolutions and matrix products in 16 bits,
GroupNorm, the timestep embedding and the output layer in fp32: `gcg.nn.layers`). On CUDA the
configured precision runs as given. On a CPU, bf16 runs where the CPU has bf16 dot-product units
that oneDNN uses (x86: AVX512_BF16 or AMX; elsewhere: oneDNN's own bf16 check); without them it
would run emulated and slower than fp32, and fp16 has no fast CPU path, so both fall back to fp32.
Used by training (`gcg.training.build`) and sampling (`gcg.sample`).
"""
from __future__ import annotations

import platform

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision, name: str = "precision") -> str:
    """`precision` if it is one of PRECISIONS, else a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def cpu_bf16_missing() -> str | None:
    """None when bf16 autocast on this CPU runs on bf16 units through oneDNN; else why not (a phrase)."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "oneDNN has no bf16 kernels for this CPU (torch.ops.mkldnn._is_mkldnn_bf16_supported() is False)"
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        if not (avx512_bf16 or amx):
            return ("this CPU lacks AVX512_BF16 and AMX (torch.cpu._is_avx512_bf16_supported() is False), "
                    "so bf16 would be emulated, slower than fp32")
    return None


def resolve_precision(precision: str, device) -> tuple[str, str | None]:
    """(the precision that runs on `device`, None or why it differs from `precision`).

    CUDA: `precision` as given. Other devices: fp32 stays; bf16 runs where `cpu_bf16_missing()`
    finds nothing missing; fp16, and bf16 without bf16 units, compute in fp32.
    """
    check_precision(precision)
    device_type = torch.device(device).type
    if precision == "fp32" or device_type == "cuda":
        return precision, None
    if device_type != "cpu":
        return "fp32", f"precision={precision} autocast is for CUDA and CPUs; computing in fp32 on {device_type}"
    if precision == "fp16":
        return "fp32", "precision=fp16 autocast is for CUDA; computing in fp32 on cpu"
    missing = cpu_bf16_missing()
    if missing is None:
        return "bf16", None
    return "fp32", f"precision=bf16 on a CPU needs bf16 units: {missing}; computing in fp32"


def autocast(precision: str, device):
    """``torch.autocast`` in `precision` on `device` ("fp32": a disabled one, i.e. a no-op).

    Give the precision that runs (`resolve_precision`), not the configured one.
    """
    check_precision(precision)
    device_type = torch.device(device).type
    enabled = precision != "fp32"
    return torch.autocast(device_type, dtype=DTYPES[precision] if enabled else None, enabled=enabled)
