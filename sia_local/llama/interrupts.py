"""Ctrl-C and SIGTERM during a llama.cpp decode: raised when the decode returns, never inside a ctypes callback.

Python runs a signal's handler at the next bytecode of the main thread. While llama.cpp decodes with a Python
eval callback (the layer taps), that next bytecode is inside the callback, where ctypes prints an exception as
"Exception ignored on calling ctypes callback function" and drops it: the decode and the loop go on as if no
key was pressed. So the handlers made here (`install`) only note a signal that lands while the main thread is
inside a decode (`deferred`), and `deferred` raises it as soon as that decode returns -- wherever it landed.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_depth = 0  # decodes the main thread is inside now
_pending: list[Callable[[], BaseException]] = []  # signals that landed during one, to raise when it returns


@contextmanager
def deferred() -> Iterator[None]:
    """Run a decode with Ctrl-C / SIGTERM held back until it returns (only the main thread takes signals)."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            make = _pending[0]
            _pending.clear()
            raise make()


def deferring(make: Callable[[], BaseException]) -> Callable[[int, Any], None]:
    """A signal handler raising `make()` at once, or when the decode it landed in returns."""
    def handler(signum: int, frame: Any) -> None:
        if _depth:
            _pending.append(make)
            return
        raise make()

    handler.sia_deferring = True  # type: ignore[attr-defined]
    return handler


def install(signum: int = signal.SIGINT, make: Callable[[], BaseException] = KeyboardInterrupt) -> Any:
    """Make `signum` deferring (main thread only); returns the handler it replaced (None: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, deferring(make))


def ensure_sigint() -> None:
    """Make Ctrl-C deferring where Python's default handler is in place (a library user's script): a Ctrl-C that
    lands in a tapped decode then still raises KeyboardInterrupt. A handler the program set itself is left alone."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        install()
