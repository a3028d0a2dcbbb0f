"""WorkShaper's tooling, a distribution of its own (``workshaper-tools``, in ``tools/`` of the
clone) so the runtime package stays lean: ``bench`` (the benchmark suite, docs/benchmarks.md),
``chaos`` (the fault-injection harness, docs/reliability.md) and ``testing`` (private
redis-server processes, the TCP fault proxy, network namespaces, the journaling handler and the
invariant checker, used by both and by the test suite). ``workshaper`` never imports it."""
