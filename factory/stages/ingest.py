"""Ingest: folders of files, JSONL and Parquet into the base schema (id, text, source, meta).

`plan()` lists the inputs on the driver (metadata only) and groups them into shard tasks; `read_task()` turns
one task into a shard.  Bad input never crashes a shard and is never dropped silently: each bad file, line or
row becomes a quarantine row with its file, position and reason, so ``in = out + quarantined``.
"""

from __future__ import annotations

import hashlib
import json
import os
import site
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from factory.config import IngestConfig, InputSpec
from factory.stages.base import Quarantine, ShardResult
from factory.store import BASE_SCHEMA

BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class IngestTask:
    shard: str
    format: str  # files | jsonl | parquet
    label: str  # the `source` column for rows of this task
    paths: tuple[str, ...]
    spec: dict[str, Any]
    # per path, the name its row ids hash: the path relative to its input root, prefixed by the source label,
    # so a corpus read from another checkout or machine gets the same ids (meta keeps the absolute path)
    names: tuple[str, ...] = ()

    def id_name(self, path: str) -> str:
        if not self.names:
            return path
        by_path = self.__dict__.get("_names_by_path")
        if by_path is None:  # a dict once per task, not a list scan per file
            by_path = dict(zip(self.paths, self.names))
            object.__setattr__(self, "_names_by_path", by_path)
        return by_path[path]


def doc_id(source: str, position: int, text: str) -> str:
    """Stable and content-derived: the same text at the same place always gets the same id."""
    h = xxhash.xxh3_128()
    h.update(source.encode("utf-8", "surrogatepass"))
    h.update(b"\0%d\0" % position)
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------------------------- planning
def demo_inputs(cfg: IngestConfig) -> list[tuple[str, list[str]]]:
    """The running interpreter's own Python code: the standard library, then site-packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    roots = [("stdlib", stdlib)]
    if cfg.demo_include_site_packages:
        for sp in dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()]):
            roots.append(("site-packages", Path(sp).resolve()))
    groups: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for label, root in roots:
        files = []
        for p in sorted(root.rglob("*.py")):
            s = str(p)
            if label == "stdlib" and ("site-packages" in p.parts or "dist-packages" in p.parts):
                continue
            if s not in seen and p.is_file():
                seen.add(s)
                files.append(s)
        groups.append((label, files))
    if cfg.demo_max_files is not None:
        # a spread over every package rather than the alphabetically first ones, the same on every machine
        # with the same files: rank by a hash of the path relative to its root
        ranked = []
        for label, files in groups:
            for f in files:
                rel = demo_name(f, label).split("/", 1)[1]
                ranked.append((xxhash.xxh64_intdigest(rel.encode("utf-8", "surrogateescape")), label, f))
        ranked.sort()
        keep = {f for _, _, f in ranked[: cfg.demo_max_files]}
        groups = [(label, [f for f in files if f in keep]) for label, files in groups]
    return [(label, files) for label, files in groups if files]


def demo_name(path: str, label: str) -> str:
    """A demo file's machine-independent name: ``stdlib/json/decoder.py``, ``site-packages/numpy/linalg/...``."""
    if label == "stdlib":
        rel = os.path.relpath(path, Path(sysconfig.get_paths()["stdlib"]).resolve())
    else:
        rel = path.split("site-packages/", 1)[-1].split("dist-packages/", 1)[-1]
    return f"{label}/{rel}"


def _input_name(path: str, root: Path, prefix: str) -> str:
    """A user input's name relative to the input root (a single-file input is its file name)."""
    rel = os.path.relpath(path, root) if root.is_dir() else Path(path).name
    return f"{prefix}/{rel}"


def _detect_format(path: Path, spec: InputSpec) -> str:
    if spec.format != "auto":
        return spec.format
    if path.is_dir():
        return "files"
    if path.suffix in (".jsonl", ".ndjson") or path.name.endswith(".jsonl.gz"):
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    return "files"


def _list_files(root: Path, spec: InputSpec) -> list[str]:
    if root.is_file():
        return [str(root)]
    exts = {e if e.startswith(".") else f".{e}" for e in spec.extensions}
    out = []
    for p in sorted(root.glob(spec.glob)):
        if p.is_file() and (not exts or p.suffix in exts):
            out.append(str(p))
    return out


def plan(cfg: IngestConfig) -> list[IngestTask]:
    """Shard tasks, deterministic for the same inputs: files grouped `rows_per_shard` at a time; one task per
    JSONL or Parquet file."""
    tasks: list[IngestTask] = []

    def add(fmt: str, label: str, paths: list[str], spec: dict[str, Any], name) -> None:
        names = tuple(name(p) for p in paths)
        tasks.append(IngestTask(f"part-{len(tasks):05d}", fmt, label, tuple(paths), spec, names))

    if not cfg.inputs:
        for label, files in demo_inputs(cfg):
            for i in range(0, len(files), cfg.rows_per_shard):
                add("files", label, files[i : i + cfg.rows_per_shard], {}, lambda p, lb=label: demo_name(p, lb))
        return tasks
    seen_labels: dict[str, int] = {}
    for spec in cfg.inputs:
        root = Path(spec.path).expanduser()
        label = root.name or str(root)
        # two inputs with the same folder name must not share id names
        seen_labels[label] = seen_labels.get(label, 0) + 1
        id_prefix = label if seen_labels[label] == 1 else f"{label}#{seen_labels[label]}"
        spec_d = spec.model_dump()
        # format "auto" decides per file: .jsonl / .parquet files are record files, anything else a document
        by_format: dict[str, list[str]] = {"files": [], "jsonl": [], "parquet": []}
        for f in _list_files(root, spec):
            by_format[_detect_format(Path(f), spec)].append(f)
        files = by_format["files"]

        def name(p: str, root=root, prefix=id_prefix) -> str:
            return _input_name(p, root, prefix)

        for i in range(0, len(files), cfg.rows_per_shard):
            add("files", label, files[i : i + cfg.rows_per_shard], spec_d, name)
        for fmt in ("jsonl", "parquet"):
            for f in by_format[fmt]:
                add(fmt, label, [f], spec_d, name)
    return tasks


def fingerprint(tasks: list[IngestTask]) -> str:
    """A hash of what the listing saw (path, size, mtime): changed inputs give a new version id."""
    h = hashlib.sha256()
    for t in tasks:
        for p in t.paths:
            try:
                st = os.stat(p)
                h.update(f"{t.shard}|{t.format}|{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{t.shard}|{t.format}|{p}|missing\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- reading
def _os_error(path: str, e: OSError, q: Quarantine) -> None:
    if isinstance(e, FileNotFoundError):
        q.add(path, -1, "vanished", "listed but gone when read")
    else:
        q.add(path, -1, "unreadable", f"{type(e).__name__}: {e}")
    return None


class Ingest:
    name = "ingest"

    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg

    def read_task(self, task: IngestTask) -> ShardResult:
        rows: list[dict[str, Any]] = []
        q = Quarantine()
        readers = {"files": self._read_files, "jsonl": self._read_jsonl, "parquet": self._read_parquet}
        for path in task.paths:
            rows.extend(item for item in readers[task.format](path, task, q) if item is not None)
        table = pa.Table.from_pylist(rows, schema=BASE_SCHEMA)
        # every input unit (file, line, row, or whole unreadable file) ends as a row or a quarantine row
        n_in = len(rows) + sum(q.reasons.values())
        if task.format == "files" and n_in != len(task.paths):
            raise AssertionError(f"{task.shard}: {len(task.paths)} files listed but {n_in} accounted for")
        return ShardResult(table, n_in, quarantined=q.reasons, side={"quarantine": q.table()})

    # one document per file ------------------------------------------------------------------
    def _read_files(self, path: str, task: IngestTask, q: Quarantine) -> Iterator[dict[str, Any] | None]:
        yield self._read_file(path, task, q)

    def _read_file(self, path: str, task: IngestTask, q: Quarantine) -> dict[str, Any] | None:
        try:
            size = os.stat(path).st_size
            if size > self.cfg.max_doc_bytes:  # never read a huge file just to reject it
                q.add(path, -1, "oversized", f"{size} bytes > max_doc_bytes={self.cfg.max_doc_bytes}")
                return None
            with open(path, "rb") as f:
                data = f.read(self.cfg.max_doc_bytes + 1)
        except OSError as e:
            return _os_error(path, e, q)
        if len(data) > self.cfg.max_doc_bytes:  # grew after the stat
            q.add(path, -1, "oversized", f"> max_doc_bytes={self.cfg.max_doc_bytes}")
            return None
        text = self._decode(data, path, -1, q)
        if text is None:
            return None
        if len(text.strip()) < max(1, self.cfg.min_doc_chars):
            q.add(path, -1, "empty", f"{len(text)} chars")
            return None
        meta = {"path": path, "ext": Path(path).suffix, "bytes": len(data)}
        return {"id": doc_id(task.id_name(path), 0, text), "text": text, "source": task.label, "meta": json.dumps(meta)}

    def _decode(self, data: bytes, src: str, pos: int, q: Quarantine) -> str | None:
        if b"\x00" in data[:BINARY_SNIFF_BYTES]:
            q.add(src, pos, "binary", "NUL byte in the first 8 KiB")
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            q.add(src, pos, "undecodable", f"not UTF-8 at byte {e.start}: {e.reason}")
            return None

    # JSONL: one document per line -----------------------------------------------------------
    def _read_jsonl(self, path: str, task: IngestTask, q: Quarantine) -> Iterator[dict[str, Any] | None]:
        field, id_field = task.spec.get("text_field", "text"), task.spec.get("id_field")
        try:
            f = open(path, "rb")
        except OSError as e:
            yield _os_error(path, e, q)
            return
        with f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue  # blank separator lines are not records
                if len(raw) > self.cfg.max_doc_bytes:
                    q.add(path, lineno, "oversized", f"{len(raw)} bytes")
                    yield None
                    continue
                line = self._decode(raw, path, lineno, q)
                if line is None:
                    yield None
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    q.add(path, lineno, "malformed_json", str(e))
                    yield None
                    continue
                yield self._record(obj, field, id_field, path, lineno, task, q)

    def _record(self, obj: Any, field: str, id_field: str | None, path: str, pos: int, task: IngestTask, q: Quarantine):
        if not isinstance(obj, dict):
            q.add(path, pos, "not_an_object", type(obj).__name__)
            return None
        text = obj.get(field)
        if not isinstance(text, str):
            q.add(path, pos, "missing_text", f"field {field!r} is {type(text).__name__}")
            return None
        if len(text.strip()) < max(1, self.cfg.min_doc_chars):
            q.add(path, pos, "empty", f"{len(text)} chars")
            return None
        if len(text.encode("utf-8", "surrogatepass")) > self.cfg.max_doc_bytes:
            q.add(path, pos, "oversized", f"{len(text)} chars")
            return None
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            q.add(path, pos, "undecodable", f"lone surrogate at {e.start}")
            return None
        rid = obj.get(id_field) if id_field else None
        meta = {k: v for k, v in obj.items() if k not in (field, id_field)}
        meta.update({"path": path, "position": pos})
        return {
            "id": str(rid) if rid is not None else doc_id(task.id_name(path), pos, text),
            "text": text,
            "source": task.label,
            "meta": json.dumps(meta, default=str),
        }

    # Parquet: one document per row ----------------------------------------------------------
    def _read_parquet(self, path: str, task: IngestTask, q: Quarantine) -> Iterator[dict[str, Any] | None]:
        field, id_field = task.spec.get("text_field", "text"), task.spec.get("id_field")
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        except FileNotFoundError as e:
            yield _os_error(path, e, q)
            return
        except Exception as e:  # ArrowInvalid / OSError for truncated or corrupt files
            q.add(path, -1, "corrupt_parquet", f"{type(e).__name__}: {e}")
            yield None
            return
        if field not in names:
            q.add(path, -1, "missing_text_column", f"no column {field!r} (has {names})")
            yield None
            return
        row = 0
        for rg in range(pf.num_row_groups):
            try:
                batch = pf.read_row_group(rg)
            except Exception as e:
                n = pf.metadata.row_group(rg).num_rows
                q.add(path, row, "corrupt_row_group", f"row group {rg} ({n} rows): {type(e).__name__}: {e}")
                yield None
                row += n
                continue
            for obj in batch.to_pylist():
                yield self._record(obj, field, id_field, path, row, task, q)
                row += 1
