"""A design spike for issue 9, not the product: what a *lane* protocol costs at many keys.

Today's protocol leases each (partition, sub key) on its own: a Redis list per sub key, and a
claim, a completion and their Lua per lease. With one item per sub key every item pays all of
it. A lane protocol spreads each partition's sub keys over a fixed number of lanes (a hash of
the sub key); a worker leases whole lanes and keeps sub-key order in memory, as Confluent's
Parallel Consumer and Karafka's virtual partitions do inside one process. Redis then does per
round trip and lane what it does today per lease: one variadic push per lane on enqueue, one
read of a lane's next entries, one trim of its finished prefix (offsets finished above the
prefix wait in a set). No Redis work is per item beyond the list entry and its offset.

This package measures only that data path: enqueue, lease check, read, record, trim, with the
lease's fencing token checked in every script. Left out (each would add cost): dedupe of re-sent
offsets, backpressure, retries and dead letters, crash windows, the reaper, the ack loop and
the watermark. Lanes are assigned to workers statically (lane i to worker i mod W) and still
leased, so the lease checks are paid; idle workers poll every millisecond instead of waiting on
a bell. Its numbers are a ceiling for such a design on this machine, not a result.

    python -m workshaper_tools.bench.lanes [--items N] [--lanes L] [--workers W]

runs each S1 key shape (10, 1,000 and one sub key per item) on a private redis-server: the raw
queue of ``manykeys`` first, then the lanes, and prints both and their ratio.
"""
