"""The one error type the CLI turns into a one-line message instead of a traceback."""


class SynthgenError(ValueError):
    """Bad input or an impossible request, explained in words that say what to fix.

    Library code raises it (it is a ``ValueError``); the CLI prints ``error: <message>`` and exits 1.
    """
