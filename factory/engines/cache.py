"""The response cache: append-only JSONL shards, one per writing process, under one directory.

A key is the sha256 of (engine identity, template id + hash, sampling parameters, the rendered messages),
so a rerun of the same stage finds every reply it already paid for and makes no new model call for it.
Each writer (the driver, or one engine actor) appends to its own file, so writers never contend and the
directory may sit on a shared filesystem; a line is flushed and fsynced as soon as its reply arrives, so a
run killed mid-stage loses at most the requests in flight.  A torn last line (a kill during a write) is
skipped on read.  Only successful replies are cached: an error is retried by the next run.

Nothing secret is ever written: entries hold the key, the reply text, usage and the logprob summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable

from factory.engines.base import ChatRequest, ChatResponse


def cache_key(identity: dict[str, Any], template: dict[str, Any] | None, req: ChatRequest) -> str:
    payload = {
        "engine": identity,
        "template": template or {},
        "sampling": req.sampling(),
        "input": hashlib.sha256(json.dumps(req.messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, root: str | Path, load: bool = True):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, dict[str, Any]] = {}
        self._offsets: dict[Path, int] = {}
        self._fh = None
        self._path: Path | None = None
        self._lock = threading.Lock()
        if load:
            self.refresh()

    # reading ------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read what other writers appended since the last refresh."""
        for p in sorted(self.root.glob("*.jsonl")):
            start = self._offsets.get(p, 0)
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            if size <= start:
                continue
            with open(p, "rb") as f:
                f.seek(start)
                data = f.read(size - start)
            end = data.rfind(b"\n")
            if end < 0:
                continue  # only a partial line so far
            for line in data[: end + 1].splitlines():
                try:
                    rec = json.loads(line)
                    self._index.setdefault(rec["key"], rec["response"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line from a killed writer
            self._offsets[p] = start + end + 1

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, key: str) -> ChatResponse | None:
        rec = self._index.get(key)
        return ChatResponse.from_json(rec, cached=True) if rec is not None else None

    def get_many(self, keys: Iterable[str]) -> dict[str, ChatResponse]:
        out = {}
        for k in keys:
            r = self.get(k)
            if r is not None:
                out[k] = r
        return out

    # writing ------------------------------------------------------------------------------------
    def _writer(self):
        if self._fh is None:
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._path = self.root / name
            self._fh = open(self._path, "ab")
        return self._fh

    def put(self, resp: ChatResponse) -> None:
        self.put_many([resp])

    def put_many(self, responses: Iterable[ChatResponse]) -> None:
        lines = []
        for r in responses:
            if r.error is not None or r.key in self._index:
                continue
            d = r.to_json()
            lines.append(json.dumps({"key": r.key, "response": d}, ensure_ascii=False).encode() + b"\n")
            self._index[r.key] = d
        if not lines:
            return
        with self._lock:
            fh = self._writer()
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def count_lines(root: str | Path) -> dict[str, int]:
    """Entries per key over every shard (a test's check that nothing was answered twice)."""
    counts: dict[str, int] = {}
    for p in Path(root).glob("*.jsonl"):
        for line in p.read_bytes().splitlines():
            try:
                k = json.loads(line)["key"]
            except (ValueError, KeyError):
                continue
            counts[k] = counts.get(k, 0) + 1
    return counts
