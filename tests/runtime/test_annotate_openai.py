"""The annotate stage with the openai engine against a REAL llama_cpp.server on 127.0.0.1.

* the server is SIGKILLed and restarted mid-run: the stage completes, every sampled doc is annotated once,
  and a rerun (with the server down) makes zero model calls;
* a token budget runs out: a partial version is committed, and a rerun with more budget resumes from the
  cache and completes;
* the API key appears in no file any of these runs wrote (debug logs included).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from factory.config import build_config
from factory.engines.base import BudgetExhausted
from factory.engines.cache import count_lines
from factory.engines.llama_server import LlamaServer
from factory.pipeline import StageContext
from factory.runtime.run_annotate import run_annotate
from factory.stages.ingest import demo_inputs
from factory.config import IngestConfig
from factory.store import BASE_SCHEMA, Store, check_counts

KEY = "sk-annot-" + "7f3c9a1e5b2d4c6f8a0b"
KEY_ENV = "ANNOT_STAGE_TEST_KEY"
N = 10


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("annot_openai_out")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the server log lives outside the scanned output root: it is the test's, not the run's
    s = LlamaServer(api_key=KEY, n_ctx=1024, log_path=tmp_path_factory.mktemp("srvlog") / "server.log").start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A small dataset version of demo-corpus files (stdlib and site-packages), written through the store."""
    root = tmp_path_factory.mktemp("annot_dataset")
    rows = []
    for label, files in demo_inputs(IngestConfig(demo_max_files=120)):
        for f in files[:8]:
            text = Path(f).read_text(errors="replace")
            rows.append({"id": f"{label}:{Path(f).name}:{len(rows)}", "text": text, "source": label, "meta": "{}"})
    store = Store(root)
    w = store.begin("ingest-annottest", {"kind": "dataset", "stage": "ingest", "parent": None})
    n = len(rows)
    w.write_shard("s0", pa.Table.from_pylist(rows, schema=BASE_SCHEMA), {"in": n, "out": n, "dropped": {}, "quarantined": {}})
    w.commit({"in": n, "out": n, "dropped": {}, "quarantined": {}}, schema=BASE_SCHEMA)
    return root / "versions" / "ingest-annottest"


def _cfg(root: Path, dataset_dir: Path, server: LlamaServer, cache: Path, **engine) -> dict:
    vdir = root / "versions" / dataset_dir.name
    if not vdir.exists():
        shutil.copytree(dataset_dir, vdir)
    return {
            "output_root": str(root),
            "stages": ["ingest", "annotate"],
            "engine": {
                "kind": "openai",
                "base_url": server.base_url,
                "api_key_env": KEY_ENV,
                "cache_dir": str(cache),
                "max_concurrency": 2,
                "max_retries": 8,
                "timeout_s": 60,
                **engine,
            },
            "annotate": {"sample_size": N, "max_doc_chars": 150, "max_tokens": 16, "rows_per_shard": 4},
        }


def _ctx(root: Path, dataset_dir: Path, server: LlamaServer, cache: Path, **engine):
    cfg = build_config(_cfg(root, dataset_dir, server, cache, **engine))
    store = Store(root)
    return StageContext(cfg, store, "annotate", latest={"dataset": store.get(dataset_dir.name)}, progress=False)


def _check_version(v, n=N):
    assert v.kind == "annotations" and v.parent == "ingest-annottest"
    check_counts(v.manifest["counts"])
    t = v.read()
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == n
    assert set(t.column("parse_status").to_pylist()) <= {"ok", "unparsed"}
    assert v.manifest["engine"]["identity"] == {"kind": "openai", "model": "SmolLM2-135M-Instruct"}
    return t


def test_server_killed_and_restarted_mid_run(out_root, dataset_dir, server):
    root = out_root / "kill"
    cache = out_root / "kill-cache"
    root.mkdir()
    # every log record of the run, debug level included, goes to a file under the output root
    handler = logging.FileHandler(root / "run-debug.log")
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    result: dict = {}

    def run():
        try:
            # 20 retries (~2.5 min of capped backoff) outlast a slow restart of the server on a busy machine
            result["v"] = run_annotate(_ctx(root, dataset_dir, server, cache, max_retries=20))
        except BaseException as e:  # surfaced below
            result["e"] = e

    try:
        t = threading.Thread(target=run)
        t.start()
        deadline = time.time() + 120
        while sum(count_lines(cache).values()) < 2 and time.time() < deadline and t.is_alive():
            time.sleep(0.05)
        done_before_kill = sum(count_lines(cache).values())
        server.kill()  # SIGKILL with requests in flight
        time.sleep(1.5)
        server.start()  # same port
        t.join(timeout=300)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old_level)
        handler.close()
    assert not t.is_alive()
    assert "e" not in result, repr(result.get("e"))
    assert 2 <= done_before_kill < N, "the kill did not land mid-run"
    version, cached = result["v"]
    assert not cached
    table = _check_version(version)
    stats = version.manifest["annotate_stats"]
    assert stats["new_requests"] == N and stats["cached_responses"] == 0
    # nothing lost, nothing annotated twice: one cache entry per sampled doc, each written once
    lines = count_lines(cache)
    assert len(lines) == N and set(lines.values()) == {1}
    assert table.column("prompt_tokens").to_pylist().count(0) == 0

    # a rerun of the same stage into a fresh store, with the server DOWN: zero model calls
    server.stop()
    try:
        v2, cached2 = run_annotate(_ctx(out_root / "kill-rerun", dataset_dir, server, cache))
    finally:
        server.start()
    assert not cached2 and v2.id == version.id
    assert v2.manifest["annotate_stats"]["new_requests"] == 0
    assert v2.manifest["annotate_stats"]["cached_responses"] == N
    assert v2.read().sort_by("id").equals(table.sort_by("id"))
    # and the same store: a version cache hit
    v3, cached3 = run_annotate(_ctx(root, dataset_dir, server, cache))
    assert cached3 and v3.id == version.id


def test_budget_runs_out_then_resumes(out_root, dataset_dir, server):
    root = out_root / "budget"
    cache = out_root / "budget-cache"
    with pytest.raises(BudgetExhausted) as exc:
        run_annotate(_ctx(root, dataset_dir, server, cache, max_total_tokens=1500, max_concurrency=1))
    partial = exc.value.version
    assert partial is not None and partial.manifest["partial"] is True
    done = exc.value.done
    assert 0 < done < N and exc.value.total == N
    counts = partial.manifest["counts"]
    check_counts(counts)
    assert counts["out"] == done and counts["dropped"] == {"budget_exhausted": N - done}
    usage = partial.manifest["annotate_stats"]["usage"]
    assert usage["total_tokens"] <= 1500 and usage["exhausted"]
    assert len(count_lines(cache)) == done
    full_id = partial.manifest["complete_version"]
    assert not Store(root).exists(full_id)

    # rerun with more budget: resumes from the cache, sends only the rest
    v, cached = run_annotate(_ctx(root, dataset_dir, server, cache, max_total_tokens=100_000, max_concurrency=1))
    assert not cached and v.id != partial.id
    _check_version(v)
    stats = v.manifest["annotate_stats"]
    assert stats["cached_responses"] == done and stats["new_requests"] == N - done
    assert set(count_lines(cache).values()) == {1} and len(count_lines(cache)) == N
    # the partial rows are exactly the full version's rows for those docs
    pt = partial.read().sort_by("id")
    ft = v.read().filter(pa.compute.is_in(v.read().column("id"), pt.column("id"))).sort_by("id")
    assert pt.equals(ft)


RUN_STAGE = """
import json, sys
from factory.config import build_config
from factory.pipeline import StageContext
from factory.runtime.run_annotate import run_annotate
from factory.store import Store
cfg = build_config(json.loads(sys.argv[1]))
store = Store(cfg.output_root)
run_annotate(StageContext(cfg, store, "annotate", latest={"dataset": store.get("ingest-annottest")}, progress=False))
"""


def test_driver_killed_mid_stage_loses_only_in_flight(out_root, dataset_dir, server):
    root = out_root / "driverkill"
    cache = out_root / "driverkill-cache"
    cfg = _cfg(root, dataset_dir, server, cache, max_concurrency=1)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    p = subprocess.Popen([sys.executable, "-c", RUN_STAGE, json.dumps(cfg)], cwd=repo, env=env)
    deadline = time.time() + 120
    while sum(count_lines(cache).values()) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    done = len(count_lines(cache))
    assert 3 <= done < N and not Store(root).list()[1:]  # nothing committed but the dataset
    v, cached = run_annotate(_ctx(root, dataset_dir, server, cache, max_concurrency=1))
    assert not cached
    _check_version(v)
    stats = v.manifest["annotate_stats"]
    assert stats["cached_responses"] == done and stats["new_requests"] == N - done
    lines = count_lines(cache)
    assert len(lines) == N and set(lines.values()) == {1}


def test_the_key_is_in_no_file_the_runs_wrote(out_root):
    files = [p for p in out_root.rglob("*") if p.is_file()]
    assert len(files) > 10  # manifests, config.yaml, parquet shards, cache shards, the debug log
    assert any(p.name == "run-debug.log" and p.stat().st_size > 0 for p in files)
    for p in files:
        data = p.read_bytes()
        assert KEY.encode() not in data, f"API key found in {p}"
    # the name of the variable is recorded (that is fine and useful), the value is not
    assert any(KEY_ENV.encode() in p.read_bytes() for p in files if p.name == "config.yaml")
