"""The terminal views' pure parts: durations, the stall warning and the acked rate, fed with
explicit times (no clock in these tests)."""

from __future__ import annotations

import pytest
from rich.console import Console

from workshaper.ops.inspection import PartitionView, Snapshot, StuckKey
from workshaper.ops.render import Rates, parse_duration, stall_warnings, status_view


def view(partition: int, acked: int | None, unacked: int, age: float | None) -> PartitionView:
    return PartitionView(
        partition=partition,
        acked=acked,
        highest=100,
        lag=100 - (acked or 0),
        unacked_items=unacked,
        lowest_unfinished=None if age is None else (acked or 0) + 1,
        pending_sub_keys=1 if age is not None else 0,
        runnable_sub_keys=0,
        leased_sub_keys=1 if age is not None else 0,
        expired_leases=0,
        blocked_sub_keys=0,
        dead_letters=0,
        oldest_unfinished_age=age,
        server_ms=0,
    )


def snapshot(*views: PartitionView, stuck: list[StuckKey] | None = None) -> Snapshot:
    return Snapshot("orders", 0.0, list(views), [], stuck or [])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60", 60.0), ("60s", 60.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("0", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "-5s", "1d"])
def test_parse_duration_names_a_bad_value(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_a_partition_held_by_an_old_item_is_named_with_its_sub_key() -> None:
    held = view(3, 41, 12, 75.0)
    stuck = StuckKey(3, "customer-7", 42, 75.0, 2, "w-1", "retry backoff", 12)
    [line] = stall_warnings(snapshot(held, view(4, 9, 0, None), stuck=[stuck]), 60.0)
    assert line == (
        "WARNING partition 3: watermark held below offset 42 for 1.2m with 12 item(s) unacked:"
        " sub key 'customer-7' retry backoff on w-1, 2 failed attempt(s)"
    )
    assert stall_warnings(snapshot(held), 120.0) == []


def test_watching_flags_an_acked_watermark_that_stands_still() -> None:
    rates = Rates()
    still = view(0, 10, 5, None)  # every item finished, yet nothing is acked: no ack loop?
    rates.update(snapshot(still), now=100.0)
    rates.update(snapshot(still), now=130.0)
    assert stall_warnings(snapshot(still), 60.0, rates) == []
    rates.update(snapshot(still), now=161.0)
    [line] = stall_warnings(snapshot(still), 60.0, rates)
    assert "acked watermark 10 has not moved for 1.0m" in line
    rates.update(snapshot(view(0, 30, 0, None)), now=171.0)
    assert rates.rates[0] == 2.0  # 20 offsets in 10 s
    assert stall_warnings(snapshot(view(0, 30, 0, None)), 60.0, rates) == []


def test_status_view_renders_every_table() -> None:
    console = Console(width=160, record=True)
    stuck = StuckKey(0, b"\x01", 7, 90.0, 0, None, "waiting", 3)
    console.print(status_view(snapshot(view(0, 6, 3, 90.0), stuck=[stuck]), 60.0, 60.0))
    text = console.export_text()
    for part in ("namespace orders", "partitions", "workers", "stuck sub keys", "01", "WARNING"):
        assert part in text
