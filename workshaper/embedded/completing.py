"""complete_items.lua's rules that the typed engine (engine.py) follows apart from its state:
the checks of a call's arguments that can fail it, and which leading entries of a queue a
lease's reported offsets finish."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from workshaper.errors import ScriptError
from workshaper.scripts import Completion

#: The actions of a lease whose worker may hold entries (held > 0): it is never released.
HOLDING = ("k", "c")


def check_completions(completions: Sequence[Completion], batch_size: int) -> None:
    """Raise the script's error for a call it refuses before writing anything: a held count
    that is negative, past the batch or given with "y"/"r" (the script checks every lease's
    arguments first), then a sub key that comes twice (its one fencing read would check the
    second completion against what the first one changed)."""
    for i, c in enumerate(completions, 1):
        if c.held and (not 0 <= c.held <= batch_size or c.action not in HOLDING):
            raise ScriptError(f"complete_items: bad argument held of lease {i}: {c.held}")
    seen: set[bytes] = set()
    for c in completions:
        if c.sub in seen:
            raise ScriptError(
                f"complete_items: bad argument repeated sub key: {c.sub.decode('latin-1')}"
            )
        seen.add(c.sub)


def finished_run(entries: Iterable[bytes], offsets: Sequence[int]) -> tuple[int, int]:
    """Which leading ``entries`` of a lease's queue its reported ``offsets`` finish: (where in
    ``offsets`` the matched ones start, how many entries match them in order). They start at
    the offset the head entry is: the first, or in a retried call that carries more offsets
    than its applied earlier one, a later one (that call took those before it off). (0, 0)
    when the head is none of them."""
    it = iter(entries)
    head = next(it, None)
    if head is None:
        return 0, 0
    prefixes = [b"%d|" % offset for offset in offsets]
    start = next((j for j, prefix in enumerate(prefixes) if head.startswith(prefix)), -1)
    if start < 0:
        return 0, 0
    finished = 1
    for prefix, entry in zip(prefixes[start + 1 :], it, strict=False):
        if not entry.startswith(prefix):
            break
        finished += 1
    return start, finished
