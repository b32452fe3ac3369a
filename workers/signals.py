"""How a worker stops: the first SIGTERM or SIGINT asks for a clean stop, the second stops now.

A clean stop (:func:`lrtune.training.request_stop`) ends the running unit at its next epoch
boundary or within ``StoreSettings.unit_check_s`` seconds mid-epoch, and a range test at its
next step (:mod:`lrtune.workers.loop` says what happens to each); stopping at once raises
KeyboardInterrupt in the main thread, abandoning the unit mid-epoch. A signal after that is
ignored, so that the hand-back completes.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from lrtune.training import request_stop

logger = logging.getLogger("lrtune.workers")


@contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """While in the ``with``: the first of ``signals`` asks for a clean stop, the second stops
    at once; later ones are ignored (see the module). The previous handlers come back after."""
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) == 1:
            logger.info("event=signal signal=%s: stopping the running unit at its next look", name)
            request_stop()
        elif len(received) == 2:
            logger.info("event=signal signal=%s: stopping now", name)
            raise KeyboardInterrupt
        else:
            logger.info("event=signal signal=%s: already stopping", name)

    previous = {signum: signal.signal(signum, handle) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
