"""The worker: leases sub keys, runs their items in order, records results, renews and reaps.

One module per role:

    facade.py       Worker: the public API and the process's lifecycle (start, run, stop)
    settings.py     the options, checked once
    state.py        what the coordinator's parts share (leases held, bells, counters)
    lease.py        a held sub key and its states
    coordinator.py  the loop: drain the inbox, one round trip, dispatch the replies
    claims.py       claims of runnable sub keys and the read of each lease's first batch
    completions.py  recording finished items; the next batch of the same sub key
    failures.py     failed attempts, retries with backoff, dead letters and blocks
    renewals.py     lease renewals
    reaper.py       taking back expired leases of crashed or stalled workers
    registry.py     the worker's heartbeat in the namespace registry
    isolation.py    crash windows: a sub key run alone after an unattributed crash
    prefetch.py     how many leases to hold and read ahead
    dispatch.py     handing batches to the executor; standby; dropping lost leases
    waker.py        the thread blocking on the wake-up bell
    executor.py     running handlers on threads or an event loop

docs/architecture.md shows how they fit together.
"""

from workshaper.worker.facade import Worker

__all__ = ["Worker"]
