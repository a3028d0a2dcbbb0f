"""``--log-format json``: one JSON object per log line, for log shippers.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``worker`` (the process's worker
or bridge id, when it has one), ``partition`` and ``offset`` (when the line is about one),
``event`` (the message) and ``exc`` (a traceback, when there is one).

``partition`` and ``offset`` come from the job being run by this thread
(``workshaper.current_job()``), else from the message's own ``partition %d`` / ``offset %d``
arguments, so no log call had to change. A message never carries a payload (WorkShaper does
not log them), and a Redis URL's password is masked in every line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from workshaper.jobs import current_job

#: The log formats the console scripts accept.
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"

_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
_PASSWORD = re.compile(r"(rediss?://[^:/@\s]*:)[^@\s]+@")


def mask_passwords(text: str) -> str:
    return _PASSWORD.sub(r"\1***@", text)


def _named_args(template: str, args: tuple[Any, ...]) -> dict[str, int]:
    """``partition`` / ``offset`` values given as ``"partition %d"`` / ``"offset %d"``."""
    out: dict[str, int] = {}
    index = 0
    for match in _SPEC.finditer(template):
        if match.group() == "%%":
            continue
        if index >= len(args):
            break
        before = template[: match.start()].rstrip().rsplit(None, 1)
        word = before[-1] if before else ""
        value = args[index]
        if word in ("partition", "offset") and isinstance(value, int):
            out.setdefault(word, value)
        index += 1
    return out


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "worker": getattr(record, "worker", None) or self.worker,
        }
        partition = getattr(record, "partition", None)
        offset = getattr(record, "offset", None)
        try:
            job = current_job()
        except LookupError:  # not inside a handler
            job = None
        if job is not None:
            partition = job.partition if partition is None else partition
            offset = job.offset if offset is None else offset
        if (partition is None or offset is None) and isinstance(record.args, tuple):
            named = _named_args(str(record.msg), record.args)
            partition = named.get("partition") if partition is None else partition
            offset = named.get("offset") if offset is None else offset
        doc["partition"] = partition
        doc["offset"] = offset
        doc["event"] = mask_passwords(record.getMessage())
        if record.exc_info:
            doc["exc"] = mask_passwords(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


def set_log_worker(worker: str) -> None:
    """Name the worker in every JSON line from now on (its id is known after setup)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.worker = worker


def configure_logging(level: str, log_format: str = "text", worker: str | None = None) -> None:
    """Set up the root logger for a console script. ValueError names a bad level or format."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.setLevel(level.upper())  # ValueError for an unknown level
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
