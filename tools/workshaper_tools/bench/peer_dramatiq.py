"""The Dramatiq app of the peer comparison: ``dramatiq workshaper_tools.bench.peer_dramatiq``.

Only the bench's own venv (.venv-bench) has dramatiq; nothing else imports this module.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from workshaper_tools.bench.peer_jobs import record

dramatiq: Any = importlib.import_module("dramatiq")
_redis_broker: Any = importlib.import_module("dramatiq.brokers.redis")

broker = _redis_broker.RedisBroker(url=os.environ["WS_PEER_REDIS_URL"])
dramatiq.set_broker(broker)


def _noop(message: Any) -> None:
    record(message)


noop: Any = dramatiq.actor(_noop, actor_name="noop", queue_name="bench", max_retries=0)
