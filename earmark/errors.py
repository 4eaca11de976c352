"""Errors a user can act on.

Raise :class:`EarmarkError` (or a subclass) for anything caused by input, configuration or
the environment: the CLI prints its message on one line, without a traceback, and exits
non-zero. Say what was wrong, with which input, and what to do.
"""


class EarmarkError(Exception):
    """A problem the user can act on; ``str(err)`` is the whole message."""

    exit_code = 2


class AudioError(EarmarkError):
    """Audio input that cannot be read: missing, not audio, truncated, unsupported."""


class ModelError(EarmarkError):
    """A model that is missing, corrupt or of the wrong version."""


class PolicyError(EarmarkError):
    """A privacy policy file that cannot be used; the gate fails closed."""


class WireError(EarmarkError):
    """A message that does not match the wire schema."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # a short stable code, used as a metrics label
        self.detail = detail
