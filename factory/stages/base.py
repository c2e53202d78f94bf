"""What every stage shares: a shard result with its counts, and the helpers stages use to build them.

A stage is a small class over one record type (a pyarrow Table in the store's schema).  It never imports
ray: the runtime decides where a shard runs, the stage only says what happens to it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from factory.store import QUARANTINE_SCHEMA


@dataclass
class ShardResult:
    """One shard's output: its rows, its side tables and the counts that must reconcile."""

    table: pa.Table | None
    n_in: int
    dropped: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    side: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        return {
            "in": self.n_in,
            "out": 0 if self.table is None else self.table.num_rows,
            "dropped": dict(self.dropped),
            "quarantined": dict(self.quarantined),
        }


class Quarantine:
    """Collects rejected inputs with where they came from and why; becomes the `quarantine` side table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.reasons: Counter = Counter()

    def add(self, source: str, position: int, reason: str, detail: str = "") -> None:
        self.rows.append({"source": source, "position": int(position), "reason": reason, "detail": detail[:500]})
        self.reasons[reason] += 1

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=QUARANTINE_SCHEMA)
