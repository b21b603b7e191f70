"""The one error type the CLI turns into a one-line message instead of a traceback, and the stop request
a signal becomes."""

import signal
import threading


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


def stop_on_sigterm():
    """From now on SIGTERM raises :class:`Stopped` in the main thread, as Ctrl-C raises KeyboardInterrupt.

    Returns:
        The handler it replaced, for ``signal.signal(signal.SIGTERM, ...)`` to restore; None off the main
        thread, where Python cannot set handlers (nothing is changed then).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise Stopped(signum)

    return signal.signal(signal.SIGTERM, stop)
