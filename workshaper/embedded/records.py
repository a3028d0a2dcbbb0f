"""The byte formats of what the partition scripts write, for the typed engine (engine.py):
queue entries' offsets, failure records, and the claim record a re-sent claim is answered from.
Each follows the function of includes/partition.lua or claim_sub_keys.lua it names."""

from __future__ import annotations

from dataclasses import dataclass


def entry_offset(entry: bytes) -> int | None:
    """partition.lua's entry_offset: the digits before the first "|", or None."""
    head, bar, _ = entry.partition(b"|")
    if not bar or not head.isdigit() or not head.isascii():
        return None
    return int(head)


def failure_record(error_json: bytes, attempts: int, now: int, entry: bytes) -> bytes:
    """partition.lua's failure_record: error JSON, attempts, server ms and entry, a line each."""
    return b"%s\n%d\n%d\n%s" % (error_json, attempts, now, entry)


def with_sub_key(error_json: bytes, sub: bytes) -> bytes:
    """partition.lua's with_sub_key: the (encoded) sub key added to the error JSON as hex."""
    if not error_json.startswith(b"{"):
        return error_json
    rest = error_json[1:]
    field = b'{"sub_hex":"' + sub.hex().encode() + b'"'
    if rest.lstrip(b" \t\n\r\f\v").startswith(b"}"):
        return field + rest
    return field + b"," + rest


@dataclass(slots=True)
class ClaimRecord:
    """A worker's last claim (claim_sub_keys.lua's claim record), to answer a re-sent call."""

    request_id: bytes
    ready_left: int
    first_token: int
    subs: list[bytes]
    attempts: list[bytes | None]  # per lease: the head's attempts record, when one was read
    attempts_read: bool  # was the attempts hash read (it was not empty)?

    def encode(self) -> bytes:
        """The record's string, as claim_sub_keys.lua's encode_record writes it."""
        parts = [b"%d %d\n" % (self.ready_left, self.first_token)]
        parts += [b"%d:%s" % (len(sub), sub) for sub in self.subs]
        if self.attempts_read:
            for j, record in enumerate(self.attempts, start=1):
                if record:
                    parts.append(b"\n%d %s 0" % (j, record))
        return self.request_id + b"\n" + b"".join(parts)
