"""Stopping on a signal at a safe point.

SIGTERM or SIGINT (Ctrl-C) only *requests* a stop; training checks for it between chunks of
steps and after each evaluation, a study between trials. Raising from the handler itself could
land anywhere, half-way through an Optuna journal record or an MLflow write. A second signal
stops at once (in a sweep worker, only a second SIGINT: see request_stop_once).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stopped(KeyboardInterrupt):
    """A stop was requested by a signal; its name is the message."""


_requested: list[str] = []


def request_stop(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _requested:  # asked twice: now
        raise Stopped(name)
    _requested.append(name)
    # The stopped trial fails on purpose; the command says so in one line, so Optuna's
    # warning and traceback for it would only repeat that.
    logging.getLogger("optuna").setLevel(logging.ERROR)


def request_stop_once(signum: int, frame: Any) -> None:
    """A worker's SIGTERM: a stop request that a repeat never turns into "at once". It comes
    from the command stopping its workers (right after a Ctrl-C that the whole terminal group,
    workers included, received too), the parent-death signal or a kill: escalating on it made
    a worker raise mid-step, or even in its exit handlers (a traceback on a clean stop). A
    second Ctrl-C (SIGINT) still stops at once."""
    if not _requested:
        request_stop(signum, frame)


def requested() -> str | None:
    return _requested[0] if _requested else None


def check() -> None:
    """Raise Stopped if a stop was requested: call at points where stopping is safe."""
    if _requested:
        raise Stopped(_requested[0])


@contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
                    ) -> Iterator[None]:
    """While inside: the signals request a stop instead of interrupting (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()
