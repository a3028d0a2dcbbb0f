"""The embedded backend: an in-process Redis for ``Producer(None)``, ``Worker(None)`` and
``Manager`` without a server.

It runs the same ``.lua`` scripts as a real server (Lua 5.1 through lupa, each compiled once)
over a small command table of Python containers (``commands.py``, ``store.py``), so the scripts
stay the one definition of every partition operation. Build one through
``workshaper.connection.embedded_backend()``.
"""

from workshaper.embedded.client import EmbeddedConnection, EmbeddedServer
from workshaper.embedded.store import CommandError

__all__ = ["CommandError", "EmbeddedConnection", "EmbeddedServer"]
