"""--log-format json: one JSON object per line from a real worker process, the bridge's parser
and the CLI; never a payload, never a password."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import workshaper
from workshaper.kafka.cli import parser as kafka_parser
from workshaper.ops.logjson import JsonFormatter
from workshaper_tools.testing import RedisServer

from .conftest import wait_for
from .ops_handlers import runs

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
KEYS = {"time", "level", "logger", "worker", "partition", "offset", "event"}


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(set(line) >= KEYS for line in lines), lines
    return lines


def test_worker_logs_json_lines_without_payloads_or_passwords(
    namespace: str, tmp_path: Path
) -> None:
    password = "s3cret-pw"
    with RedisServer(password=password) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        with workshaper.Producer(url, namespace) as producer:
            producer.enqueue_many(
                [
                    ("k", {"do": "ok", "secret": "PAYLOAD-1"}, 0, 2),
                    ("k", {"do": "fail", "secret": "PAYLOAD-2"}, 0, 3),
                ]
            )
            proc = subprocess.Popen(
                [
                    str(BIN / "workshaper-worker"),
                    "tests.ops_handlers:work",
                    "--redis",
                    url,
                    "--namespace",
                    namespace,
                    "--max-attempts",
                    "1",
                    "--name",
                    "w-json",
                    "--log-format",
                    "json",
                ],
                env={**os.environ, "WS_OPS_DIR": str(tmp_path)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            try:
                assert producer.flush(timeout=30)
                wait_for(lambda: ("start", 0, 3) in runs(tmp_path))
            finally:
                proc.terminate()
                _, err = proc.communicate(timeout=30)
    lines = json_lines(err)
    assert {line["worker"] for line in lines} == {"w-json"}
    failed = [line for line in lines if str(line["event"]).startswith("work failed")]
    assert failed and failed[0]["partition"] == 0 and failed[0]["offset"] == 3
    assert failed[0]["level"] == "WARNING"
    dead = [line for line in lines if "dead-lettered" in str(line["event"])]
    assert dead and dead[0]["partition"] == 0
    assert "PAYLOAD" not in err and password not in err


def test_cli_logs_operator_actions_as_json(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    def work(message: object, partition: int, offset: int) -> None:
        raise ValueError("nope")

    worker = workshaper.Worker(redis_server.url, namespace, work=work, max_attempts=1).start()
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue("a", "m", 1, 4)
            assert producer.flush(timeout=30)
    finally:
        worker.stop(10)
    result = subprocess.run(
        [
            str(BIN / "workshaper"),
            "--log-format",
            "json",
            "dead-letters",
            "drop",
            "--yes",
            "--redis",
            redis_server.url,
            "--namespace",
            namespace,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [line] = json_lines(result.stderr)
    assert line["event"] == f"dropped 1 dead letter(s) of namespace {namespace}"
    assert line["partition"] is None and line["level"] == "WARNING"


def test_bridge_takes_log_format_and_the_formatter_masks_secrets() -> None:
    args = kafka_parser().parse_args(
        ["--bootstrap", "k:9092", "--group", "g", "--topic", "t", "--log-format", "json"]
    )
    assert args.log_format == "json"
    formatter = JsonFormatter("kafka-bridge:g")
    record = logging.LogRecord(
        "workshaper.kafka",
        logging.ERROR,
        __file__,
        1,
        "partition %d: commit of offset %d failed (redis %s)",
        (7, 41, "redis://user:hunter2@host:6379/0"),
        None,
    )
    doc = json.loads(formatter.format(record))
    assert (doc["worker"], doc["partition"], doc["offset"]) == ("kafka-bridge:g", 7, 41)
    assert "hunter2" not in doc["event"] and "redis://user:***@host" in doc["event"]
