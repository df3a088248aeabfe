"""Graceful stop: the first Ctrl-C / SIGTERM asks the loop to save a checkpoint and stop after
the current step; a second one stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

log = logging.getLogger("lmforge")

SIGNALS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """Context manager: installs the handlers (main thread only) and restores the old ones."""

    def __init__(self):
        self.signal: Optional[str] = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            old = signal.getsignal(sig)
            if old is signal.SIG_IGN:  # e.g. started with nohup: respect it
                continue
            self._old[sig] = old
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        self._restore()

    def _restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            except (ValueError, TypeError):
                pass
        self._old = {}

    def _handle(self, signum, frame) -> None:
        name = SIGNALS.get(signum, str(signum))
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt(f"second {name}: stopped at once, without a checkpoint")
        self.signal = name
        log.warning("%s: finishing this step, saving a checkpoint, then stopping "
                    "(press Ctrl-C again to stop at once)", name)
