"""The spike's worker process: leases its lanes, keeps sub-key order in memory, runs items on
threads, and records each round trip's finished prefix per lane in one pipeline.

    python -m workshaper_tools.bench.lanes.worker URL NAMESPACE PARTITIONS LANES INDEX WORKERS
        noop|sleep OUT
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import redis

from workshaper_tools.bench.lanes.protocol import LaneKeys, decode_entry, load_scripts

CONCURRENCY = 8
READ_BATCH = 100
#: Entries held in memory per lane (read, not yet finished) before no more are read.
WINDOW = 400
LEASE_MS = 30_000
IDLE_SLEEP = 0.001
#: Idle rounds between two looks at the harness's stop flag.
STOP_CHECK = 100

#: Most items of one sub key handed to a thread at once (run in order, one task).
RUN_BATCH = 100

Batch = list[tuple[int, bytes]]  # (offset, payload) of one sub key, in order
Task = tuple["Lane", bytes, Batch]


class Lane:
    """One leased lane: the entries read from its head, which finished, which wait."""

    def __init__(self, keys: LaneKeys, index: int, token: int) -> None:
        self.keys = keys
        self.index = index
        self.script_keys = [keys.lease(index), keys.lane(index), keys.finished(index)]
        self.token = token
        self.offsets: list[int] = []  # of the entries read, from the list's head
        self.done: list[bool] = []
        self.position: dict[int, int] = {}  # offset -> index in offsets + self.base
        self.base = 0  # entries trimmed since the lease began
        self.reported_above: set[int] = set()  # finished above the prefix, in Redis's set
        self.finished_since: list[int] = []  # finished since the last cycle was sent
        #: Sub keys with a batch on a thread -> their entries read since, waiting for it.
        self.waiting: dict[bytes, deque[tuple[int, bytes]]] = {}
        self.unfinished = 0

    def prefix(self) -> int:
        """How many head entries finished without a gap."""
        done, k = self.done, 0
        while k < len(done) and done[k]:
            k += 1
        return k

    def read(self, offset: int) -> None:
        self.position[offset] = self.base + len(self.offsets)
        self.offsets.append(offset)
        self.done.append(False)
        self.unfinished += 1

    def finished(self, offset: int) -> None:
        at = self.position[offset] - self.base
        self.done[at] = True
        self.unfinished -= 1
        self.finished_since.append(offset)

    def cycle_args(self) -> list[Any] | None:
        """The cycle script's arguments, or None when there is nothing to record or read."""
        trim = self.prefix()
        position, base = self.position, self.base
        above = [o for o in self.finished_since if position[o] - base >= trim]
        want = READ_BATCH if self.unfinished < WINDOW else 0
        if not trim and not above and not want:
            return None
        reported = self.reported_above
        leaving = [o for o in self.offsets[:trim] if o in reported] if reported else []
        last = self.offsets[trim - 1] if trim else 0
        return [
            self.token,
            LEASE_MS,
            trim,
            last,
            len(self.offsets),
            want,
            len(above),
            *above,
            *leaving,
        ]

    def applied(self, args: list[Any], trimmed: int) -> None:
        above_count = args[6]
        self.reported_above.update(args[7 : 7 + above_count])
        self.reported_above.difference_update(args[7 + above_count :])
        for offset in self.offsets[:trimmed]:
            del self.position[offset]
        del self.offsets[:trimmed]
        del self.done[:trimmed]
        self.base += trimmed
        self.finished_since = []


class LaneWorker:
    def __init__(
        self, url: str, namespace: str, mine: list[tuple[int, int]], name: str, *, sleep: bool
    ) -> None:
        """``mine``: the (partition, lane) pairs this worker leases. ``sleep``: the work sleeps
        its payload's microseconds (S2), else it does nothing."""
        self.sleep = sleep
        self.client = redis.Redis.from_url(url)
        self.shas = load_scripts(self.client)
        self.namespace = namespace
        self.name = name
        self.mine = mine
        self.lanes: list[Lane] = []
        self.tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self.inbox: queue.SimpleQueue[tuple[Lane, bytes, Batch]] = queue.SimpleQueue()
        self.records: list[tuple[int, str, int, float]] = []
        self.threads = [
            threading.Thread(target=self._serve, daemon=True) for _ in range(CONCURRENCY)
        ]

    def claim(self) -> None:
        """Lease every lane of this worker (one claim each, one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for partition, i in self.mine:
            keys = LaneKeys(self.namespace, partition)
            pipe.evalsha(self.shas["claim"], 2, keys.lease(i), keys.meta, self.name, LEASE_MS)
        for (partition, i), token in zip(self.mine, pipe.execute(), strict=True):
            if int(token) < 0:
                raise RuntimeError(f"lane {partition}/{i} is held by another worker")
            self.lanes.append(Lane(LaneKeys(self.namespace, partition), i, int(token)))

    def _serve(self) -> None:
        """An executor thread: runs a sub key's entries in order, recording (partition, sub key,
        offset, start) of each."""
        records, now, sleep = self.records, time.monotonic, self.sleep
        while (task := self.tasks.get()) is not None:
            lane, sub, batch = task
            name = sub.decode("latin-1")
            for offset, payload in batch:
                records.append((lane.keys.partition, name, offset, now()))
                if sleep:
                    time.sleep(int(payload) / 1e6)
            self.inbox.put(task)

    def _start(self, lane: Lane, sub: bytes, waiting: deque[tuple[int, bytes]]) -> None:
        """Hand the sub key's next entries to a thread, in order, as one task."""
        batch = [waiting.popleft() for _ in range(min(RUN_BATCH, len(waiting)))]
        self.tasks.put((lane, sub, batch))

    def _collect(self, first: tuple[Lane, bytes, Batch]) -> int:
        """Take finished batches from the inbox; start each sub key's next entries."""
        got, item = 0, first
        while True:
            lane, sub, batch = item
            got += len(batch)
            for offset, _payload in batch:
                lane.finished(offset)
            waiting = lane.waiting[sub]
            if waiting:
                self._start(lane, sub, waiting)
            else:
                del lane.waiting[sub]
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return got

    def _round_trip(self) -> int:
        """Record and read on every lane that has something to do; returns entries read."""
        pipe = self.client.pipeline(transaction=False)
        sent: list[tuple[Lane, list[Any]]] = []
        for lane in self.lanes:
            args = lane.cycle_args()
            if args is not None:
                pipe.evalsha(self.shas["cycle"], 3, *lane.script_keys, *args)
                sent.append((lane, args))
        if not sent:
            return 0
        read = 0
        for (lane, args), reply in zip(sent, pipe.execute(), strict=True):
            if int(reply[0]) < 0:
                raise RuntimeError(f"lane {lane.keys.partition}/{lane.index} fenced")
            lane.applied(args, int(reply[1]))
            idle: dict[bytes, deque[tuple[int, bytes]]] = {}  # sub keys with nothing running
            for entry in reply[2:]:
                offset, sub, payload = decode_entry(entry)
                read += 1
                lane.read(offset)
                waiting = lane.waiting.get(sub)
                if waiting is None:
                    waiting = lane.waiting[sub] = idle[sub] = deque()
                waiting.append((offset, payload))
            for sub, waiting in idle.items():
                self._start(lane, sub, waiting)
        return read

    def run(self, stop_key: str) -> None:
        for thread in self.threads:
            thread.start()
        self.claim()
        idle = 0
        while True:
            try:
                got = self._collect(self.inbox.get(timeout=IDLE_SLEEP))
            except queue.Empty:
                got = 0
            read = self._round_trip()
            if got or read:
                idle = 0
                continue
            idle += 1
            if idle % STOP_CHECK == 0 and self.client.exists(stop_key):
                break
        for _ in self.threads:
            self.tasks.put(None)


def assigned(partitions: int, lanes: int, index: int, workers: int) -> list[tuple[int, int]]:
    """The lanes of worker ``index`` of ``workers``: a static split (see the package's doc)."""
    return [
        (p, i)
        for p in range(partitions)
        for i in range(lanes)
        if (p * lanes + i) % workers == index
    ]


def main(argv: list[str]) -> None:
    url, namespace, partitions, lanes, index, workers, work, out = argv
    mine = assigned(int(partitions), int(lanes), int(index), int(workers))
    worker = LaneWorker(url, namespace, mine, f"w{index}", sleep=work == "sleep")
    worker.client.set(f"lanes:{namespace}:ready:{index}", 1)
    worker.run(f"lanes:{namespace}:stop")
    Path(out).write_text(json.dumps(worker.records))


if __name__ == "__main__":
    main(sys.argv[1:])
