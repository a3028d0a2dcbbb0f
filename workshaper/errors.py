"""Every exception WorkShaper raises."""

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


class ProducerClosed(WorkShaperError, RuntimeError):
    """The producer was closed: before the enqueue, or by ``close()`` while the enqueue waited
    for room in a full partition. ``statuses`` as in QueueFull: what was written before."""

    def __init__(self, message: str, statuses: list[object] | None = None) -> None:
        super().__init__(message)
        self.statuses = statuses or []


class RedisOutOfMemory(WorkShaperError):
    """Redis refused a write because it reached ``maxmemory`` (with a no-eviction policy).
    Nothing of the refused partitions' items was written; ``statuses`` as in QueueFull. Free
    memory (let workers drain, raise maxmemory), then enqueue the same items again."""

    def __init__(self, message: str, statuses: list[object] | None = None) -> None:
        super().__init__(message)
        self.statuses = statuses or []


class RedisLostWrites(WorkShaperError):
    """Redis no longer holds items it accepted from this producer: the highest accepted offset
    of ``partitions`` went below one it acknowledged before (Redis restarted from an older
    snapshot, or failed over to a replica that lagged). Nothing of these partitions' items
    was written, so nothing later can be acked past the lost ones. They never run unless
    enqueued again: enqueue again from the last offset known finished (for a Kafka consumer,
    the committed offset). ``statuses`` as in QueueFull."""

    def __init__(
        self, message: str, partitions: list[int], statuses: list[object] | None = None
    ) -> None:
        super().__init__(message)
        self.partitions = partitions
        self.statuses = statuses or []


class LaneCountMismatch(WorkShaperError):
    """The namespace's lane count, recorded in Redis by its first producer, is not this
    producer's (``lanes``; None: no lanes). A sub key's lane is its hash modulo the count, so
    producers with different counts would split a sub key over two lists and break its
    order: nothing was written. ``recorded`` and ``lanes`` are the two counts (None: no
    lanes). Use the recorded count, or a new namespace (or ``workshaper purge`` it)."""

    def __init__(self, message: str, recorded: int | None, lanes: int | None) -> None:
        super().__init__(message)
        self.recorded = recorded
        self.lanes = lanes


class BackendUnavailable(WorkShaperError, ConnectionError):
    """Redis could not be reached or refused our credentials. The message names host and port;
    the password is never shown."""


class AccessDenied(BackendUnavailable):
    """Redis refused a command or key to our user (an ACL denial, NOPERM): the user's ACL
    lacks what this role needs (see ``workshaper acl``)."""


class ScriptError(WorkShaperError):
    """A command of a batch answered with an error reply (a bug, or a server refusing a
    script): raised by the Reply of that command only."""
