"""Every exception WorkShaper raises, and the one place script return codes become exceptions."""

from __future__ import annotations


class WorkShaperError(Exception):
    """Base class of every WorkShaper error."""


class InvalidInput(WorkShaperError, ValueError):
    """A value given to WorkShaper is out of range or malformed; nothing was written."""


class InvalidType(InvalidInput, TypeError):
    """A value given to WorkShaper has the wrong type; nothing was written."""


class QueueFull(WorkShaperError):
    """A partition stayed at ``max_in_queue`` unacked items for longer than the timeout.

    ``statuses`` is aligned with the items given: the Enqueued status of each item that was
    written, None for each item that was not (the full partition's items from the first one
    that did not fit, and items of other partitions not sent yet).
    """

    def __init__(self, message: str, partition: int, statuses: list[object] | None = None) -> None:
        super().__init__(message)
        self.partition = partition
        self.statuses = statuses or []


class BackendUnavailable(WorkShaperError, ConnectionError):
    """Redis could not be reached or refused our credentials. The message names host and port;
    the password is never shown."""


class LeaseLost(WorkShaperError):
    """The worker no longer holds the lease of a sub key (it expired and another worker may have
    it). Raised to nobody: logged when a fenced write is rejected."""


class ScriptError(WorkShaperError):
    """A Lua script answered with an error code this client does not know."""


#: Return codes shared by the Lua scripts (see the header of each ``.lua`` file).
CODE_OK = 1
CODE_FENCED = -1  # the caller's fencing token no longer owns the lease
CODE_STALE = 0  # the write was applied already (a retried script): nothing to do


def raise_for_code(code: int, what: str) -> None:
    """Turn a negative script return code into the exception that explains it."""
    if code >= 0:
        return
    if code == CODE_FENCED:
        raise LeaseLost(f"{what}: lease is not held by this worker's token")
    raise ScriptError(f"{what}: unknown script return code {code}")
