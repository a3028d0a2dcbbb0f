"""Test support shipped with the package (used by the test suite, the chaos harness and the
benchmarks): private redis-server processes, a journaling handler, an invariant checker."""

from workshaper_tools.testing.processes import stop_processes
from workshaper_tools.testing.redis_server import RedisServer, free_port, redis_server_binary

__all__ = ["RedisServer", "free_port", "redis_server_binary", "stop_processes"]
