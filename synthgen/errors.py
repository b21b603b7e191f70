"""The one error type the CLI turns into a one-line message instead of a traceback, and the stop request
a signal becomes."""

import contextlib
import signal
import threading
from typing import Iterator


class SynthgenError(ValueError):
    """Bad input or an impossible request, explained in words that say what to fix.

    Library code raises it (it is a ``ValueError``); the CLI prints ``error: <message>`` and exits 1.
    """


class Stopped(KeyboardInterrupt):
    """A stop asked for by signal (SIGTERM from ``kill``, ``timeout`` or a scheduler), handled as Ctrl-C is:
    the run saves its manifest and stops its actors; the CLI exits with 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's status for a stop: 128 + the signal, so 130 for Ctrl-C (SIGINT) and 143 for SIGTERM."""
    return 128 + getattr(stop, "signum", signal.SIGINT)


# Stops that arrive inside stops_held(), raised when it ends; only the main thread runs signal handlers.
_held = {"depth": 0, "signum": None}


def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM,)) -> dict | None:
    """From now on each of ``signums`` raises :class:`Stopped` in the main thread (as Ctrl-C raises
    KeyboardInterrupt), unless it arrives inside :func:`stops_held`, which then raises it at its end.

    Returns:
        The handlers it replaced, for :func:`restore_handlers`; None off the main thread, where Python cannot
        set handlers (nothing is changed then).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        if _held["depth"]:
            _held["signum"] = _held["signum"] or signum
            return
        raise Stopped(signum)

    return {signum: signal.signal(signum, stop) for signum in signums}


def restore_handlers(previous: dict | None) -> None:
    """Put back the handlers :func:`stop_on_signals` replaced."""
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Hold the stops of :func:`stop_on_signals` until the block ends, then raise the first: for writes that
    must land together, such as an epoch's checkpoint and its training state. An error inside the block
    goes out as it is."""
    _held["depth"] += 1
    try:
        yield
    except BaseException:
        _held["depth"] -= 1
        if not _held["depth"]:
            _held["signum"] = None  # the error ends the program now; the stop is not raised later instead
        raise
    _held["depth"] -= 1
    if not _held["depth"] and _held["signum"] is not None:
        signum, _held["signum"] = _held["signum"], None
        raise Stopped(signum)
