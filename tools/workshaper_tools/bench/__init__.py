"""The benchmark suite (issue 4): ``scripts/bench`` or ``workshaper bench``.

Scenarios, each measured against a baseline run on the same private redis-server in the same
process tree, and each checked for the invariants of DESIGN.md section 2 (order per sub key,
watermark never passing an unfinished offset, no loss):

    S1 throughput, no-op work, vs a raw Redis list queue        ``throughput.py``
    S2 Confluent Parallel Consumer's table (sleep work)         ``ordering.py``
    S3 latency at a fixed offered load                          ``latency.py``
    S4 cost per item at saturation (round trips, CPU, memory)   ``cost.py``
    S5 growth with sub keys and partitions                      ``growth.py``
    peers: RQ and Dramatiq on the same Redis                    ``peers.py``

matplotlib, rq, dramatiq, py-spy and pyinstrument are optional: they are imported lazily, so
``--quick`` runs in the project's own venv with none of them installed.
"""
