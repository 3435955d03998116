"""One error path for gcg's command lines (``python -m gcg.train``, ``gcg.sample``, ``gcg.evaluate``,
``gcg.toy``, ``gcg.features``).

Each entry point runs its work through `run`: a user error (a `UsageError`, a ``ValueError`` -- the
library's way of rejecting bad input -- or an ``OSError`` about a file) becomes ONE line on stderr,
``gcg.train: error: <what is wrong>; <the fix>``, and exit code 2. Arguments are checked before any
work (`ArgumentParser` and the ``type=`` helpers below; `check_output_dir`, `check_output_file`,
`check_device`). Anything else is a bug and keeps its traceback; ``GCG_TRACEBACK=1`` shows the
traceback of a user error too.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import zipfile
from pathlib import Path

__all__ = ["UsageError", "ArgumentParser", "run", "positive_int", "finite_float", "int_list",
           "check_output_dir", "check_output_file", "check_device", "add_threads_argument",
           "set_threads", "machine_load", "read_npz"]

TRACEBACK_ENV = "GCG_TRACEBACK"


class UsageError(ValueError):
    """Bad input from the user; the message names the problem and the fix (one line)."""


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line (an OSError as 'strerror: filename')."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def run(prog: str, work, argv=None):
    """``work(argv)``, with user errors reported as one line on stderr: returns 2 in that case,
    else what `work` returns. ``--help`` (SystemExit 0) passes through; bugs raise."""
    import torch

    try:
        return work(argv)
    except (UsageError, ValueError, OSError, torch.cuda.OutOfMemoryError) as exc:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        message = one_line(exc)
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            message = ("out of GPU memory; lower --batch-size (or --set microbatch=N for training), "
                       f"or free the GPU ({message[:120]})")
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors raised as `UsageError` (one line, pointing at --help)."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------- argument types (argparse type=)
def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def finite_float(text: str) -> float:
    """A finite float (no nan / inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0 (e.g. a time limit in seconds)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (0 meaning 'off', e.g. --save-every 0)."""
    return _int_at_least(text, 0, "an integer >= 0")


def int_list(text: str) -> list[int]:
    """Comma-separated integers, e.g. '0,3,7'."""
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,3,7, got {text!r}") from None
    return values


# ---------------------------------------------------------------- checks before the work
def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path, flag: str) -> Path:
    """`path` is, or can be created as, a directory this process can write to; else UsageError
    naming `flag`. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a directory; pass a directory (created if missing)")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so the directory cannot be created; "
                         "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable; choose a directory you can write to")
    return path


def check_output_file(path, flag: str) -> Path:
    """`path` can be written as a file (its directory exists or can be created); else UsageError."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; pass a file name")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a directory; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable; choose a directory you can write to")
    return path


def check_device(name: str | None, flag: str = "--device"):
    """The torch.device `name` (None or "auto": cuda if available, else cpu), checked to exist on
    this machine; else UsageError naming `flag` ("--device", or "--set device=")."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    given = f"{flag}{name}" if flag.endswith("=") else f"{flag} {name}"
    cpu = f"{flag}cpu" if flag.endswith("=") else f"{flag} cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{given}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{given}: CUDA is not available on this machine "
                             f"(torch.cuda.is_available() is False); use {cpu}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{given}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{given}: MPS is not available on this machine; use {cpu}")
    return device


# ---------------------------------------------------------------- threads and machine load
def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads torch uses (torch.set_num_threads; default: torch's own "
                             "choice, the core count or $OMP_NUM_THREADS); on a shared machine "
                             "1 thread per process is often fastest")


def set_threads(threads: int | None) -> int:
    """torch.set_num_threads(threads) when given; returns the thread count in force."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_load(threads: int) -> tuple[str, str | None]:
    """('load 1.52 on 2 cores', hint or None): the 1-minute load average against this process's
    cores; the hint says to lower --threads when other processes already use the cores."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return f"{cores} cores", None
    text = f"load {load:.2f} on {cores} cores"
    hint = None
    if load > cores:
        hint = f"the machine is busy (load {load:.1f} > {cores} cores): other processes compete for the CPU"
        hint += (f", so {threads} torch threads may crawl; try --threads 1" if threads > 1 else
                 "; steps run slower than on an idle machine")
    return text, hint


# ---------------------------------------------------------------- reading .npz files
def read_npz(path, what: str = "file") -> dict:
    """Every array of an ``.npz`` archive as a dict, with one-line errors for a missing,
    truncated or foreign file (`what` names it in the message, e.g. "--low-res")."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickled" not in str(exc):
            raise UsageError(f"{what} {path} cannot be read as .npz ({one_line(exc)}); pass the "
                             ".npz written by gcg.sample or numpy.savez") from None
        raise UsageError(f"{what} {path} is not a NumPy .npz archive (neither a zip archive nor an "
                         ".npy array); pass the .npz written by gcg.sample or numpy.savez") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UsageError(f"{what} {path} is truncated or corrupt ({type(exc).__name__}: {one_line(exc)}); "
                         "write or copy it again") from None
    if isinstance(data, np.ndarray):
        raise UsageError(f"{what} {path} holds a single .npy array, not an .npz archive; save it with "
                         "numpy.savez(path, arr_0=images)")
    try:
        with data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise UsageError(f"{what} {path} is truncated or corrupt ({type(exc).__name__}: {one_line(exc)}); "
                         "write or copy it again") from None
