"""The hot scripts' Python transcriptions (workshaper.embedded.native): bound to the exact
script they transcribe, used only while that script is loaded. That they answer as the Lua does
is the differential test's (test_embedded_differential.py) and the script-level tests' job."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from workshaper import scripts
from workshaper.batch import run_one
from workshaper.connection import embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.embedded.native import TRANSCRIPTIONS
from workshaper.keys import NamespaceKeys
from workshaper.lua_scripts import load_script


@pytest.mark.parametrize("name", sorted(TRANSCRIPTIONS))
def test_each_transcription_names_the_script_it_transcribes(name: str) -> None:
    """A .lua changed without its transcription fails here (and runs as Lua meanwhile): update
    the Python to the new script, then its SHA1 constant."""
    _, transcribed = TRANSCRIPTIONS[name]
    assert transcribed == load_script(name).sha


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap every transcription so a test sees which ones ran."""
    from workshaper.embedded import native

    calls = {name: 0 for name in TRANSCRIPTIONS}
    wrapped = {}
    for name, (function, sha) in TRANSCRIPTIONS.items():

        def counted(*args: Any, _name: str = name, _function: Any = function) -> Any:
            calls[_name] += 1
            return _function(*args)

        wrapped[name] = (counted, sha)
    monkeypatch.setattr(native, "TRANSCRIPTIONS", wrapped)
    monkeypatch.setattr(native, "_by_sha", None)
    return calls


@pytest.mark.parametrize("native_scripts", [True, False])
def test_the_transcriptions_run_only_on_the_native_server(
    monkeypatch: pytest.MonkeyPatch, native_scripts: bool
) -> None:
    calls = _count_calls(monkeypatch)
    backend = embedded_backend(EmbeddedServer(native_scripts=native_scripts))
    part = NamespaceKeys("n").partition(0)
    run_one(backend, lambda b: scripts.offer_watermark(b, part, False))
    assert (calls["offer_watermark"] == 1) is native_scripts
    backend.close()


def test_a_flushed_script_is_not_run_by_its_transcription(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVALSHA of a script no longer loaded answers NOSCRIPT, transcription or not."""
    calls = _count_calls(monkeypatch)
    backend = embedded_backend()
    part = NamespaceKeys("n").partition(0)
    run_one(backend, lambda b: scripts.offer_watermark(b, part, False))
    backend.client.execute_command("SCRIPT", "FLUSH")  # type: ignore[no-untyped-call]
    sha = load_script("offer_watermark").sha
    with pytest.raises(redis.exceptions.NoScriptError):
        backend.client.evalsha(sha, len(part.fixed), *part.fixed, "0")
    assert calls["offer_watermark"] == 1
    backend.close()
