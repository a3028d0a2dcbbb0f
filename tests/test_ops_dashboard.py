"""The dashboard end to end in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright): real Redis, a producer, worker processes and the dashboard process. The page shows
numbers moving, replays a dead letter, and the item runs again."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import workshaper
from workshaper_tools.testing import RedisServer, free_port

from .conftest import wait_for
from .ops_handlers import runs
from .ops_procs import OpsProcesses

BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install -y chromium)",
)


def get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())
    except (OSError, urllib.error.URLError):
        return None


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[OpsProcesses]:
    p = OpsProcesses(tmp_path)
    yield p
    p.stop()


def start_dashboard(procs: OpsProcesses, url: str, namespace: str, *extra: str) -> str:
    port = free_port()
    procs.start(
        "dashboard",
        str(BIN / "workshaper"),
        "dashboard",
        "--redis",
        url,
        "--namespace",
        namespace,
        "--port",
        str(port),
        "--interval",
        "0.3",
        *extra,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/api/config"), timeout=60, interval=0.1)
    return base


def test_dashboard_in_chromium_shows_progress_and_replays_a_dead_letter(
    redis_server: RedisServer, namespace: str, procs: OpsProcesses, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    producer = workshaper.Producer(redis_server.url, namespace)
    try:
        # Partition 0 holds a poison item (offset 0) that fails until the file "fixed" exists.
        producer.enqueue_many(
            [("poison", {"do": "fail_until_fixed"}, 0, 0)]
            + [(f"k{i % 5}", {"do": "ok"}, 1, i) for i in range(50)]
        )
        base = start_dashboard(procs, redis_server.url, namespace, "--allow-actions")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/?namespace={namespace}")
                lag = page.locator('#partitions tr[data-partition="1"] td[data-field="lag"]')
                lag.wait_for(timeout=30_000)
                page.wait_for_function(
                    "() => document.querySelector("
                    '\'#partitions tr[data-partition="1"] td[data-field="lag"]\').textContent'
                    " === '50'",
                    timeout=30_000,
                )
                assert page.locator("#mode").inner_text() == "actions allowed"

                # Workers start: the numbers move on the page without a reload.
                procs.start(
                    "worker",
                    str(BIN / "workshaper-worker"),
                    "tests.ops_handlers:work",
                    "--redis",
                    redis_server.url,
                    "--namespace",
                    namespace,
                    "--max-attempts",
                    "1",
                )
                acked = '#partitions tr[data-partition="1"] td[data-field="acked"]'
                page.wait_for_function(
                    f"() => document.querySelector('{acked}').textContent === '49'",
                    timeout=60_000,
                )
                assert lag.inner_text() == "0"
                page.locator("#workers tr[data-worker]").first.wait_for(timeout=30_000)
                replay = page.get_by_test_id("replay-0-0")
                replay.wait_for(timeout=30_000)
                dead = '#partitions tr[data-partition="0"] td[data-field="dead"]'
                assert page.locator(dead).inner_text() == "1"
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

                # Fix the cause, replay from the page: the item runs again and succeeds.
                (tmp_path / "fixed").touch()
                replay.click()
                page.wait_for_function(
                    "() => document.getElementById('action-result').dataset.outcome"
                    " === 'succeeded'",
                    timeout=30_000,
                )
                assert "replay 0/0: succeeded" in page.locator("#action-result").inner_text()
                assert runs(tmp_path).count(("done", 0, 0)) == 1
                page.wait_for_function(
                    f"() => document.querySelector('{dead}').textContent === '0'",
                    timeout=30_000,
                )
                assert producer.flush(timeout=30)
                assert producer.watermark(0) == 0
            finally:
                browser.close()
    finally:
        producer.close()


def test_dashboard_is_read_only_by_default(
    redis_server: RedisServer, namespace: str, procs: OpsProcesses
) -> None:
    with workshaper.Producer(redis_server.url, namespace) as producer:
        producer.enqueue("a", "m", 0, 0)
    base = start_dashboard(procs, redis_server.url, namespace)
    config = json.loads(get(base + "/api/config") or b"{}")
    assert config["allow_actions"] is False
    request = urllib.request.Request(
        base + "/api/actions/replay",
        data=json.dumps({"namespace": namespace, "partition": 0, "offset": 0}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    refused.value.close()
    snapshot = json.loads(get(f"{base}/api/snapshot?namespace={namespace}") or b"{}")
    assert snapshot["partitions"][0]["unacked_items"] == 1
    assert namespace in json.loads(get(base + "/api/namespaces") or b"{}")["namespaces"]
    assert b'<script src="/static/app.js">' in (get(base + "/") or b"")


def post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_dashboard_unblocks_a_blocked_sub_key(
    redis_server: RedisServer, namespace: str, procs: OpsProcesses
) -> None:
    failing = {"on": True}
    ran: list[int] = []

    def work(message: object, partition: int, offset: int) -> None:
        if failing["on"]:
            raise ValueError("needs an operator")
        ran.append(offset)

    worker = workshaper.Worker(
        redis_server.url, namespace, work=work, max_attempts=1, on_exhausted="block"
    ).start()
    producer = workshaper.Producer(redis_server.url, namespace)
    try:
        producer.enqueue_many([(b"\x00k", "m", 0, 0), (b"\x00k", "m", 0, 1)])
        base = start_dashboard(procs, redis_server.url, namespace, "--allow-actions")

        def blocked() -> list[dict[str, object]]:
            doc = json.loads(get(f"{base}/api/snapshot?namespace={namespace}") or b"{}")
            return list(doc.get("blocked", []))

        [row] = wait_for(blocked)
        assert (row["sub_key"], row["sub_key_kind"], row["offset"]) == ("006b", "bytes", 0)
        status, body = post(
            base + "/api/actions/retry",
            {"namespace": namespace, "partition": 0, "sub_key": "zz", "sub_key_kind": "bytes"},
        )
        assert status == 400 and "is not hex" in str(body["error"])
        failing["on"] = False
        status, body = post(
            base + "/api/actions/retry",
            {"namespace": namespace, "partition": 0, "sub_key": "006b", "sub_key_kind": "bytes"},
        )
        assert status == 200 and body == {"unblocked": True, "action": "retry"}
        assert producer.flush(timeout=30)
        assert ran == [0, 1] and blocked() == []
    finally:
        producer.close()
        worker.stop(10)
