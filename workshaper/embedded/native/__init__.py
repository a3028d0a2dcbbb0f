"""The hot partition scripts, run by the embedded backend as Python instead of Lua.

The ``.lua`` files stay the one definition of every partition operation: a real server runs
only them, and the embedded backend can run them too (``EmbeddedServer(native_scripts=False)``).
The scripts every item passes through (enqueue, claim, complete, offer and commit of the
watermark) are transcribed here, statement by statement over the store's containers: through
Lua each ``redis.call`` crosses into Python and back, which made the embedded default several
times slower than the seed it replaces (issue 12). A transcription is bound to its script:

- it runs only for the SHA1 of that exact script, once the script is loaded, so EVALSHA,
  NOSCRIPT and SCRIPT FLUSH behave as with Lua, and a script changed without its transcription
  fails the transcription's own check (``tests/test_embedded_native.py``) instead of running
  old code;
- the differential test (``tests/test_embedded_differential.py``) drives the same random
  operations into a real redis-server and into both embedded modes and compares every reply
  and the whole state after every step; the script-level tests run on all three.

Each transcription is a function ``(store, keys, argv) -> reply`` that answers what
``LuaScripts`` would make of the script's Lua reply (bytes, int, None, list) and raises
``CommandError`` for an error reply. ``SOURCE_SHA1`` records which version of the script it
transcribes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workshaper.embedded.native import claim, complete, enqueue, watermark
from workshaper.embedded.store import Store
from workshaper.lua_scripts import load_script

NativeScript = Callable[[Store, list[bytes], list[bytes]], Any]

#: script name -> (its transcription, the SHA1 of the .lua source it transcribes)
TRANSCRIPTIONS: dict[str, tuple[NativeScript, str]] = {
    "offer_watermark": (watermark.offer_watermark, watermark.OFFER_SHA1),
    "commit_watermark": (watermark.commit_watermark, watermark.COMMIT_SHA1),
    "complete_items": (complete.complete_items, complete.COMPLETE_SHA1),
    "claim_sub_keys": (claim.claim_sub_keys, claim.CLAIM_SHA1),
    "enqueue_items": (enqueue.enqueue_items, enqueue.ENQUEUE_SHA1),
}

_by_sha: dict[bytes, NativeScript] | None = None


def native_for(sha: bytes) -> NativeScript | None:
    """The transcription of the script whose SHA1 (hex, as sent by EVALSHA) is ``sha``: of its
    source with or without the shebang line. None for any other script, and for a script whose
    source no longer is the one transcribed."""
    global _by_sha  # built on first use (it reads every transcribed script's source)
    if _by_sha is None:
        table: dict[bytes, NativeScript] = {}
        for name, (function, transcribed) in TRANSCRIPTIONS.items():
            script = load_script(name)
            if script.sha != transcribed:
                continue  # the .lua changed since: Lua runs it until the transcription follows
            table[script.sha.encode()] = function
            table[script.plain_sha.encode()] = function
        _by_sha = table
    return _by_sha.get(sha)
