"""SIGTERM/SIGINT for long-running loops (the worker, the Kafka bridge): the first signal asks
for a graceful stop, a second one exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop_handlers(
    request_stop: Callable[[], None],
    stopping: Callable[[], bool],
    *,
    forced_exit_note: str,
) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to ``request_stop``; a signal while ``stopping()`` exits the
    process with status 1, logging ``forced_exit_note`` (what a forced exit leaves behind).

    Only the main thread may install handlers: elsewhere this does nothing. Returns a function
    that puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    received = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        # Counted before anything else: a second signal can run this handler nested inside
        # the first one (Python checks for signals between bytecodes, logging included),
        # before the first has asked for the stop that stopping() reports.
        nonlocal received
        received += 1
        if received > 1 or stopping():
            log.error("second signal %d: exiting now; %s", signum, forced_exit_note)
            os._exit(1)
        request_stop()  # before the log line, which operators and tests react to
        log.info("signal %d: stopping (a second signal forces exit)", signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handle)

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore
