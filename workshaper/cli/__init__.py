"""Console scripts: ``workshaper-worker`` (``worker.py``, the fleet) and ``workshaper``
(``main.py``: demo, status and operator commands, bench, the Kafka bridge).

``common.py`` holds what the commands, the demo and the Kafka bridge share (exit on setup
errors, logging, the worker command line); ``ops.py`` the operator commands. This package
imports nothing on its own, so ``workshaper-worker`` loads only what the worker needs.
"""
