"""A producer and two workers on a real Redis (URL from argv or WORKSHAPER_REDIS_URL).

The handler fences its side effect with the lease token: a store that remembers the highest
token it saw per (partition, sub key) refuses a write from a worker whose lease was taken over.

    python docs/examples/producer_and_workers.py redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import os
import sys
import threading
import uuid

import workshaper

URL = (
    sys.argv[1]
    if len(sys.argv) > 1
    else os.environ.get("WORKSHAPER_REDIS_URL", "redis://127.0.0.1:6379/0")
)
NAMESPACE = "example-" + uuid.uuid4().hex[:8]


class FencedStore:
    """A stand-in for a database that keeps, per key, the highest fencing token it accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[tuple[int, object], int] = {}
        self.rows: dict[tuple[int, int], str] = {}

    def write(self, job: workshaper.Job, value: str) -> bool:
        with self.lock:
            key = (job.partition, job.sub_key)
            if job.token < self.tokens.get(key, 0):
                return False  # a newer leaseholder already wrote: this worker lost its lease
            self.tokens[key] = job.token
            self.rows[(job.partition, job.offset)] = value  # idempotent by (partition, offset)
            return True


store = FencedStore()


def process(message: str, partition: int, offset: int) -> None:
    job = workshaper.current_job()
    if not store.write(job, message.upper()):
        raise RuntimeError("fenced off: lease lost")


workers = [workshaper.Worker(URL, NAMESPACE, work=process, concurrency=4).start() for _ in range(2)]
acks: list[tuple[int, int]] = []
with workshaper.Producer(URL, NAMESPACE, ack=lambda p, o: acks.append((p, o))) as producer:
    items = [(f"user-{i % 10}", f"event {i}", i % 3, i // 3) for i in range(300)]
    statuses = producer.enqueue_many(items)
    print(f"accepted {statuses.count(workshaper.Enqueued.ACCEPTED)} items")
    # Re-delivery (e.g. a consumer restart) is deduplicated:
    again = producer.enqueue_many(items[:30])
    print(f"re-enqueued 30: {sorted({s.name for s in again})}")
    assert producer.flush(timeout=60)
    print(f"watermarks: {[producer.watermark(p) for p in range(3)]}")
for worker in workers:
    worker.stop(timeout=10)
print(f"rows written: {len(store.rows)}")
