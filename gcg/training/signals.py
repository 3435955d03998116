"""Stopping cleanly: SIGINT / SIGTERM (and a time limit) end the run after a whole step, on every rank."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gcg import dist
from gcg.training.state import TrainState


class StopSignals:
    """While active, SIGINT and SIGTERM only set `received` (the signal number): the loop then
    finishes its step, saves and returns. The first signal restores the previous handlers, so a
    second one acts at once (Ctrl-C: KeyboardInterrupt; SIGTERM: termination), unsaved.
    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self, state: TrainState, out_dir: Path | None):
        self.state, self.out_dir, self.received, self.previous = state, out_dir, 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        self._restore()
        if self.state.info.is_main:
            then = "saving a checkpoint" if self.out_dir is not None else "returning (out_dir=None: nothing saved)"
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            tqdm.write(f"gcg.train: {signal.Signals(signum).name}: finishing step {self.state.step + 1}, then "
                       f"{then}; {again} again stops at once without saving", file=sys.stderr)

    def _restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def _should_stop(local_code: int, info: dist.DistInfo) -> int:
    """The stop code every rank agrees on: the largest over ranks (0 = go on, 1 = time limit,
    else a signal number), so a signal that reached any one rank stops all after the same step."""
    if info.world_size == 1:
        return int(local_code)
    code = torch.tensor([float(local_code)], device=info.device)
    torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
    return int(code.item())


def stop_reason(code: int) -> str | None:
    """`TrainResult.stopped_by` of a stop code: "SIGINT" / "SIGTERM", "max_seconds", or None."""
    return signal.Signals(code).name if code > 1 else ("max_seconds" if code == 1 else None)
