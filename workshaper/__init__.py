"""WorkShaper: parallel stream processing with strict per-sub-key order and contiguous
offset watermarks, coordinated through Redis."""

from workshaper.codec import Lane
from workshaper.errors import (
    AccessDenied,
    BackendUnavailable,
    InvalidInput,
    InvalidType,
    LaneCountMismatch,
    ProducerClosed,
    QueueFull,
    RedisLostWrites,
    RedisOutOfMemory,
    ScriptError,
    WorkShaperError,
)
from workshaper.hashing import sub_key_for
from workshaper.jobs import Job, current_job
from workshaper.manager import Manager
from workshaper.producer import Enqueued, Producer
from workshaper.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BackendUnavailable",
    "Enqueued",
    "InvalidInput",
    "InvalidType",
    "Job",
    "Lane",
    "LaneCountMismatch",
    "Manager",
    "Producer",
    "ProducerClosed",
    "QueueFull",
    "RedisLostWrites",
    "RedisOutOfMemory",
    "ScriptError",
    "WorkShaperError",
    "Worker",
    "__version__",
    "current_job",
    "sub_key_for",
]
