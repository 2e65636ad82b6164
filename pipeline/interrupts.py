"""SIGINT (Ctrl-C) and SIGTERM (a scheduler stopping the pod) end a run cleanly: one line, no traceback.

Inside `stop_on_signals()` either signal raises `Interrupted`, which unwinds the run through its
`finally` blocks (Ray shut down, the lock released, `.work/` checkpoints kept); the command line then
prints what is checkpointed and exits 128 + the signal number (130, 143). A second signal while that
cleanup runs exits at once. Ray installs handlers of its own when it starts (on SIGTERM it dumps
stacks and aborts), so the runner enters `stop_on_signals()` again once Ray is up.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopping = False  # a first signal was received: the next one exits at once


class Interrupted(BaseException):
    """The run was stopped by a signal; `summary` says what an interrupted run left to resume from."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.summary = ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interruption(exc: BaseException) -> Interrupted | None:
    """The Interrupted that `exc` is or carries: raised inside C code (Ray's Cython `wait`), it can surface
    as a SystemError ("returned a result with an exception set") whose context is the Interrupted."""
    while exc is not None:
        if isinstance(exc, Interrupted):
            return exc
        exc = exc.__context__ if isinstance(exc, SystemError) else None
    return None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread while inside; the handlers before are restored."""
    global _stopping
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if all(handler is not _handle for handler in before.values()):
            _stopping = False  # the outermost block: a later run in this process starts afresh


def _handle(signum: int, _frame) -> None:
    global _stopping
    if _stopping:
        os._exit(128 + signum)
    _stopping = True
    raise Interrupted(signum)
