"""Arrays of a NumPy ``.npz`` (a zip archive) read from its headers, memory-mapped in place when
the member is stored uncompressed (``np.savez``), as the ImageNet 64x64 batches are."""

from __future__ import annotations

import math
import os
import struct
import zipfile

import numpy as np

from gcg.data.errors import DataError, DataUnavailable


def _npy_header(f):
    """(shape, fortran_order, dtype) from an open .npy stream positioned at its magic string."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def npz_member(path: str, key: str):
    """Where array ``key`` of the .npz at ``path`` lives, read from headers only:
    (shape, fortran_order, dtype, offset of the raw bytes in the file, or None if compressed)."""
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(key + ".npy")
        except KeyError:
            raise DataError(f"{path} is not an ImageNet 64x64 batch: it has no '{key}' array "
                            f"(found {sorted(n[:-4] for n in zf.namelist())})") from None
        if info.compress_type != zipfile.ZIP_STORED:
            with zf.open(info) as f:
                return (*_npy_header(f), None)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header; its name/extra lengths locate the data
        if local[:4] != b"PK\x03\x04":
            raise DataUnavailable(f"{path}: corrupt zip member '{key}.npy'; download the batch again")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        shape, fortran, dtype = _npy_header(f)
        return shape, fortran, dtype, f.tell()


def read_npz_array(path: str, key: str, cache_dir: str | None):
    """Array ``key`` of the .npz at ``path``, without reading it whole when possible.

    ``np.savez`` stores members uncompressed, so the .npy bytes lie contiguous in the zip file
    and are memory-mapped in place. A compressed member (``np.savez_compressed``) is
    decompressed once into ``cache_dir`` and memory-mapped from there, or, without a
    ``cache_dir``, read into RAM.
    """
    shape, fortran, dtype, offset = npz_member(path, key)
    if offset is not None:
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")
    cached = None if cache_dir is None else os.path.join(cache_dir, f"{os.path.basename(path)[:-4]}.{key}.npy")
    if cached is not None and os.path.exists(cached):
        return np.load(cached, mmap_mode="r")
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        arr = np.lib.format.read_array(f)
    if cached is None:
        return arr
    os.makedirs(cache_dir, exist_ok=True)
    np.save(cached + ".tmp.npy", arr)
    os.replace(cached + ".tmp.npy", cached)
    return np.load(cached, mmap_mode="r")
