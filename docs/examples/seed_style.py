"""The Ruby seed's shape, in one process with no server: a Manager on the embedded backend.

python docs/examples/seed_style.py
"""

from __future__ import annotations

import threading

import workshaper

lock = threading.Lock()
balances: dict[str, int] = {}
acked: dict[int, int] = {}


def work(message: dict[str, object], partition: int, offset: int) -> None:
    # Items of one account run in order, so this read-modify-write needs no lock per account;
    # the lock only guards the shared dict from different accounts at once.
    account = str(message["account"])
    with lock:
        balances[account] = balances.get(account, 0) + int(message["amount"])  # type: ignore[call-overload]


def ack(partition: int, offset: int) -> None:
    acked[partition] = offset  # a Kafka consumer would commit offset + 1 here


def on_error(exc: Exception, message: object, partition: int, offset: int) -> None:
    print(f"attempt failed at partition {partition} offset {offset}: {exc}")


with workshaper.Manager(work=work, ack=ack, on_error=on_error, max_in_queue=25) as manager:
    for offset in range(200):
        account = f"acct-{offset % 7}"
        sub_key = workshaper.sub_key_for(account, max_sub_keys=16)
        manager.enqueue(sub_key, {"account": account, "amount": 1}, offset % 2, offset // 2)
    manager.flush()
    print(f"enqueued {manager.total_enqueued}, acked {manager.total_acked}")

print(f"acked watermarks: {dict(sorted(acked.items()))}")
print(f"balances: {dict(sorted(balances.items()))}")
