"""The versioned dataset store.

Layout under the store root::

    versions/<id>/manifest.json          complete versions only (the commit is a rename into here)
    versions/<id>/config.yaml            the merged pipeline config that produced it
    versions/<id>/data/<shard>.parquet   rows (base schema id, text, source, meta + the stage's columns)
    versions/<id>/tables/<name>/<shard>.parquet   side tables: quarantine, clusters, rejected, ...
    versions/<id>/artifacts/...          non-tabular outputs (a classifier, token shards, a scorecard)
    staging/<id>/                        a version being written; ``_done/<shard>.json`` marks finished shards

A version id is a hash of (parent id, stage, stage config, schema), so the same step over the same input is
found again (a cache hit) and a killed run resumes in the same staging directory, recomputing only shards
without a completion marker.  Nothing here knows about Ray; this module imports pyarrow only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

BASE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("source", pa.string()),
        pa.field("meta", pa.string()),  # JSON object; a string so shards with different keys share one schema
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("position", pa.int64()),  # line number, row index or byte offset; -1 when the whole file
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)


class StoreError(RuntimeError):
    pass


class CountsMismatch(StoreError):
    """in != out + dropped + quarantined: a row went missing, which the store refuses to commit."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def version_id(parent: str | None, stage: str, config: Any, schema: Any = None, extra: Any = None) -> str:
    """Deterministic id: the same step over the same parent with the same config is the same version."""
    h = hashlib.sha256(canonical_json([parent, stage, config, schema, extra]).encode())
    return f"{stage}-{h.hexdigest()[:12]}"


def code_version() -> str:
    try:
        from importlib.metadata import version

        pkg = version("textbook-factory")
    except Exception:
        pkg = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except Exception:
        sha = ""
    return f"{pkg}+{sha}" if sha else pkg


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def merge_counts(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum shard counts {in, out, dropped: {reason: n}, quarantined: {reason: n}}."""
    total: dict[str, Any] = {"in": 0, "out": 0, "dropped": {}, "quarantined": {}}
    for c in parts:
        total["in"] += int(c.get("in", 0))
        total["out"] += int(c.get("out", 0))
        for key in ("dropped", "quarantined"):
            for reason, n in (c.get(key) or {}).items():
                total[key][reason] = total[key].get(reason, 0) + int(n)
    return total


def check_counts(counts: dict[str, Any]) -> None:
    dropped = sum(counts.get("dropped", {}).values())
    quarantined = sum(counts.get("quarantined", {}).values())
    if counts["in"] != counts["out"] + dropped + quarantined:
        raise CountsMismatch(
            f"counts do not reconcile: in={counts['in']} != out={counts['out']} + dropped={dropped}"
            f" + quarantined={quarantined} ({counts})"
        )


# --------------------------------------------------------------------------------------------- versions
@dataclass
class Version:
    id: str
    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "dataset")

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def num_rows(self) -> int:
        return int(self.manifest.get("counts", {}).get("out", 0))

    def data_files(self) -> list[Path]:
        return sorted((self.path / "data").glob("*.parquet"))

    def table_names(self) -> list[str]:
        d = self.path / "tables"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.exists() else []

    def table_files(self, name: str) -> list[Path]:
        return sorted((self.path / "tables" / name).glob("*.parquet"))

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return _read_files(self.data_files(), columns, self.manifest.get("schema"))

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return _read_files(self.table_files(name), columns, None)

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        for f in self.data_files():
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)

    def artifacts(self) -> Path:
        return self.path / "artifacts"

    def verify(self) -> list[str]:
        """Re-hash every file the manifest lists; returns the problems (empty when intact)."""
        problems = []
        for rel, info in self.manifest.get("files", {}).items():
            p = self.path / rel
            if not p.exists():
                problems.append(f"{rel}: missing")
            elif _sha256(p) != info["sha256"]:
                problems.append(f"{rel}: checksum differs")
        return problems


def _read_files(files: list[Path], columns: list[str] | None, schema_desc: Any) -> pa.Table:
    if not files:
        if schema_desc:
            fields = [f for f in _schema_from_desc(schema_desc) if columns is None or f.name in columns]
            return pa.schema(fields).empty_table()
        return pa.table({})
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="default")


def schema_desc(schema: pa.Schema) -> list[list[str]]:
    return [[f.name, str(f.type)] for f in schema]


_TYPES = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "float": pa.float32(), "bool": pa.bool_()}


def _schema_from_desc(desc: list[list[str]]) -> list[pa.Field]:
    return [pa.field(n, _TYPES.get(t, pa.string())) for n, t in desc]


# --------------------------------------------------------------------------------------------- writing
class VersionWriter:
    """Writes one version into staging; shards are independent and idempotent, the commit is one rename."""

    def __init__(self, store: "Store", vid: str, header: dict[str, Any]):
        self.store = store
        self.id = vid
        self.path = store.root / "staging" / vid
        self.header = header
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "_done").mkdir(exist_ok=True)
        started = self.path / "_started_at"
        if not started.exists():
            _atomic_write_bytes(started, _now().encode())
        self.t0 = time.time()

    # shards ---------------------------------------------------------------------------------
    def _marker(self, shard: str) -> Path:
        return self.path / "_done" / f"{shard}.json"

    def shard_done(self, shard: str) -> bool:
        return self._marker(shard).exists()

    def shard_stats(self, shard: str) -> dict[str, Any]:
        return json.loads(self._marker(shard).read_text())

    def done_shards(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text()) for p in sorted((self.path / "_done").glob("*.json"))}

    def write_shard(
        self,
        shard: str,
        table: pa.Table | None,
        counts: dict[str, Any],
        side: dict[str, pa.Table] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write a shard's rows and side tables, then its completion marker (last, so it means 'complete')."""
        if table is not None:
            write_parquet_atomic(table, self.path / "data" / f"{shard}.parquet")
        for name, t in (side or {}).items():
            if t is not None and t.num_rows:
                write_parquet_atomic(t, self.path / "tables" / name / f"{shard}.parquet")
        marker = {"counts": counts, **(extra or {})}
        _atomic_write_bytes(self._marker(shard), canonical_json(marker).encode())

    def write_side(self, name: str, shard: str, table: pa.Table) -> None:
        write_parquet_atomic(table, self.path / "tables" / name / f"{shard}.parquet")

    def artifacts(self) -> Path:
        p = self.path / "artifacts"
        p.mkdir(exist_ok=True)
        return p

    # commit ---------------------------------------------------------------------------------
    def commit(
        self,
        counts: dict[str, Any],
        schema: pa.Schema | None = None,
        extra: dict[str, Any] | None = None,
        config_yaml: str | None = None,
    ) -> Version:
        check_counts(counts)
        if config_yaml is not None:
            (self.path / "config.yaml").write_text(config_yaml)
        files = {}
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path).as_posix()
            if p.is_file() and not rel.startswith("_") and not p.name.startswith(".") and rel != "manifest.json":
                info: dict[str, Any] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
                if p.suffix == ".parquet":
                    info["rows"] = pq.ParquetFile(p).metadata.num_rows
                files[rel] = info
        if schema is None:
            data = sorted((self.path / "data").glob("*.parquet"))
            schema = pq.read_schema(data[0]) if data else None
        started = (self.path / "_started_at").read_text()
        manifest = {
            **self.header,
            "id": self.id,
            "counts": counts,
            "schema": schema_desc(schema) if schema is not None else None,
            "files": files,
            "code_version": code_version(),
            "started_at": started,
            "finished_at": _now(),
            "duration_s": round(time.time() - self.t0, 3),
            **(extra or {}),
        }
        _atomic_write_bytes(self.path / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())
        shutil.rmtree(self.path / "_done", ignore_errors=True)
        (self.path / "_started_at").unlink(missing_ok=True)
        final = self.store.root / "versions" / self.id
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # another writer committed the same deterministic version first
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            os.rename(self.path, final)  # the commit point: atomic on one filesystem
        return self.store.get(self.id)


# --------------------------------------------------------------------------------------------- store
class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        (self.root / "versions").mkdir(parents=True, exist_ok=True)

    def exists(self, vid: str) -> bool:
        return (self.root / "versions" / vid / "manifest.json").exists()

    def resolve(self, ref: str) -> str:
        """A full id, a unique prefix, or a unique suffix of the hash part."""
        if self.exists(ref):
            return ref
        ids = [v for v in self._ids() if v.startswith(ref) or v.split("-")[-1].startswith(ref)]
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise StoreError(f"no version {ref!r} in {self.root}")
        raise StoreError(f"version reference {ref!r} is ambiguous: {', '.join(ids)}")

    def _ids(self) -> list[str]:
        d = self.root / "versions"
        return sorted(p.name for p in d.iterdir() if (p / "manifest.json").exists())

    def get(self, ref: str) -> Version:
        vid = self.resolve(ref)
        path = self.root / "versions" / vid
        return Version(vid, path, json.loads((path / "manifest.json").read_text()))

    def list(self) -> list[Version]:
        return sorted((self.get(v) for v in self._ids()), key=lambda v: v.manifest.get("finished_at", ""))

    def begin(self, vid: str, header: dict[str, Any]) -> VersionWriter:
        return VersionWriter(self, vid, header)

    def staging(self) -> list[str]:
        d = self.root / "staging"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def lineage(self, ref: str) -> list[Version]:
        """The chain from this version back to the raw input (first element: the version itself)."""
        chain = [self.get(ref)]
        seen = {chain[0].id}
        while chain[-1].parent:
            parent = chain[-1].parent
            if parent in seen or not self.exists(parent):
                break
            seen.add(parent)
            chain.append(self.get(parent))
        return chain

    def ancestry(self, ref: str) -> list[dict[str, Any]]:
        """Every version this one depends on, through parents and side inputs (a classifier, a baseline), as
        small records: what a scorecard carries so it can be traced back to raw files and prompt templates."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        todo = [self.resolve(ref)]
        while todo:
            vid = todo.pop(0)
            if vid in seen or not self.exists(vid):
                continue
            seen.add(vid)
            v = self.get(vid)
            m = v.manifest
            rec = {
                "id": vid,
                "kind": v.kind,
                "stage": v.stage,
                "parent": v.parent,
                "inputs": m.get("inputs") or {},
                "counts": m.get("counts"),
            }
            for key in ("sources", "template", "featurizer", "model_id"):
                if key in m:
                    rec[key] = m[key]
            out.append(rec)
            todo += [p for p in [v.parent, *(m.get("inputs") or {}).values()] if p]
        return out

    def diff(self, a: str, b: str) -> dict[str, Any]:
        va, vb = self.get(a), self.get(b)
        ids_a = set(va.read(["id"]).column("id").to_pylist()) if va.data_files() else set()
        ids_b = set(vb.read(["id"]).column("id").to_pylist()) if vb.data_files() else set()
        cols_a = {n for n, _ in va.manifest.get("schema") or []}
        cols_b = {n for n, _ in vb.manifest.get("schema") or []}
        return {
            "a": va.id,
            "b": vb.id,
            "rows": [len(ids_a), len(ids_b)],
            "only_in_a": len(ids_a - ids_b),
            "only_in_b": len(ids_b - ids_a),
            "in_both": len(ids_a & ids_b),
            "columns_added": sorted(cols_b - cols_a),
            "columns_removed": sorted(cols_a - cols_b),
            "examples_only_in_a": sorted(ids_a - ids_b)[:5],
            "examples_only_in_b": sorted(ids_b - ids_a)[:5],
        }
