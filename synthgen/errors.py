"""The one error type the CLI turns into a one-line message instead of a traceback."""


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
