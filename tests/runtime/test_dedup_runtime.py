"""Exact and near dedup through the runners on real Ray: a real stdlib sample with planted duplicates and a
cross-shard chain, edge cases, a driver killed mid-stage (resume), and a worker node killed mid-stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from factory.config import DedupConfig, build_config
from factory.pipeline import StageContext, run_pipeline
from factory.runtime.registry import load_runners
from factory.stages import dedup as dd
from factory.store import BASE_SCHEMA, Store, merge_counts

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])


# --------------------------------------------------------------------------------------------- helpers
def _stdlib_sample(k: int) -> list[Path]:
    cands = sorted(STDLIB.glob("*.py")) + sorted(p for p in STDLIB.glob("*/*.py") if p.parts[-2] not in ("site-packages", "test", "idlelib"))
    files = [p for p in cands if 1500 < p.stat().st_size < 40000 and p.name != "textwrap.py"]
    return files[:k]


def _chain() -> tuple[str, str, str]:
    """A ~ B ~ C (Jaccard ~0.86) with A, C at ~0.73: only transitively one cluster."""
    lines = (STDLIB / "textwrap.py").read_text().splitlines()
    b = [ln + f" # chain b{i}" if i % 14 == 0 else ln for i, ln in enumerate(lines)]
    c = [ln + f" # chain c{i}" if i % 14 == 7 else ln for i, ln in enumerate(b)]
    return "\n".join(lines), "\n".join(b), "\n".join(c)


def _jaccard(a: str, b: str, cfg: DedupConfig) -> float:
    x, y = set(dd.reference_shingles(a, cfg)), set(dd.reference_shingles(b, cfg))
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    files = _stdlib_sample(240)
    a, b, c = _chain()
    (root / "a_chain").mkdir()
    (root / "a_chain" / "A.py").write_text(a)
    for i, f in enumerate(files):
        sub = root / ("lib1" if i < len(files) // 2 else "lib2")
        sub.mkdir(exist_ok=True)
        shutil.copy(f, sub / f"{i:03d}_{f.name}")
    (root / "lib1_chain").mkdir()  # sorts between lib1/ and lib2/: its own shard
    (root / "lib1_chain" / "B.py").write_text(b)
    (root / "z_chain").mkdir()
    (root / "z_chain" / "C.py").write_text(c)
    # an exact duplicate (modulo trailing whitespace) and a near duplicate of real files
    (root / "dup").mkdir()
    exact_src = files[10]
    (root / "dup" / "exact_copy.py").write_text(exact_src.read_text() + "\n\n   \n")
    near_src = files[50]
    txt = near_src.read_text().splitlines()
    (root / "dup" / "near_copy.py").write_text("\n".join(ln + "  # near" if i % 25 == 3 else ln for i, ln in enumerate(txt)))
    return {"root": root, "exact_src": exact_src.name, "near_src": near_src.name, "n": len(files) + 5}


def _pipeline_cfg(store: Path, corpus_root: Path, **dedup) -> object:
    return build_config(
        {
            "output_root": str(store),
            "stages": ["ingest", "exact_dedup", "near_dedup"],
            "ingest": {"inputs": [{"path": str(corpus_root), "extensions": [".py"]}], "rows_per_shard": 30},
            "dedup": dedup,
        }
    )


def _make_dataset(store: Store, texts: list[str], rows_per_shard: int = 10, tag: str = "t"):
    """A dataset version written straight through the store (for edge cases the ingest stage would reject)."""
    w = store.begin(f"ingest-{tag}", {"kind": "dataset", "stage": "ingest", "parent": None})
    counts = []
    for k in range(0, len(texts), rows_per_shard):
        chunk = texts[k : k + rows_per_shard]
        t = pa.Table.from_pylist(
            [{"id": f"d{k + i:05d}", "text": s, "source": "t", "meta": json.dumps({"path": f"/x/{k + i}.txt"})} for i, s in enumerate(chunk)],
            schema=BASE_SCHEMA,
        )
        c = {"in": len(chunk), "out": len(chunk), "dropped": {}, "quarantined": {}}
        w.write_shard(f"part-{k // rows_per_shard:05d}", t, c)
        counts.append(c)
    return w.commit(merge_counts(counts), schema=BASE_SCHEMA)


def _run_stage(store: Store, stage: str, dataset, **dedup):
    cfg = build_config({"output_root": str(store.root), "dedup": dedup})
    ctx = StageContext(cfg, store, stage, {"dataset": dataset}, progress=False)
    return load_runners()[stage](ctx)


def _check_counts(v) -> None:
    c = v.manifest["counts"]
    assert c["in"] == c["out"] + sum(c["dropped"].values()) + sum(c["quarantined"].values())
    assert v.read(["id"]).num_rows == c["out"]


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.ray
def test_exact_and_near_dedup_end_to_end(ray_local, corpus, tmp_path):
    cfg0 = DedupConfig()
    a, b, c = _chain()
    ab, bc, ac = _jaccard(a, b, cfg0), _jaccard(b, c, cfg0), _jaccard(a, c, cfg0)
    assert ab > 0.84 and bc > 0.84 and ac < 0.76, (ab, bc, ac)  # the premise: A and C are not directly similar

    cfg = _pipeline_cfg(tmp_path / "store", corpus["root"], verify="exact")
    runs = run_pipeline(cfg, progress=False)
    ing, ex, near = (r.version for r in runs)
    for v in (ex, near):
        _check_counts(v)
    assert ing.manifest["counts"]["out"] == corpus["n"]

    # exact: the whitespace-padded copy is dropped, the duplicates table says who was kept
    dups = ex.read_table("duplicates").to_pylist()
    assert ex.manifest["counts"]["dropped"].get("exact_duplicate", 0) == len(dups) >= 1
    planted = [d for d in dups if d["dropped_path"].endswith("exact_copy.py") or corpus["exact_src"] in (d["dropped_path"] or "")]
    assert planted, dups
    ex_ids = set(ex.read(["id"]).column("id").to_pylist())
    assert all(d["kept_id"] in ex_ids and d["dropped_id"] not in ex_ids for d in dups)

    # near: the chain is one cluster although its ends are not similar enough, and A, B, C sit in 3 shards
    rows = ing.read(["id", "meta"]).to_pylist()
    id_of = {Path(json.loads(r["meta"])["path"]).relative_to(corpus["root"]).as_posix(): r["id"] for r in rows}
    ids = {k: id_of[k] for k in ("a_chain/A.py", "lib1_chain/B.py", "z_chain/C.py")}
    shard_of = {}
    for f in ex.data_files():
        for i in pa.parquet.read_table(f, columns=["id"]).column("id").to_pylist():
            shard_of[i] = f.stem
    assert len({shard_of[i] for i in ids.values()}) == 3, ({k: shard_of[i] for k, i in ids.items()}, [f.stem for f in ex.data_files()])
    cl = near.read_table("clusters").to_pylist()
    cluster_of = {r["member_id"]: r["cluster_id"] for r in cl}
    assert cluster_of[ids["a_chain/A.py"]] == cluster_of[ids["lib1_chain/B.py"]] == cluster_of[ids["z_chain/C.py"]]
    chain = [r for r in cl if r["cluster_id"] == cluster_of[ids["a_chain/A.py"]]]
    assert sum(r["is_representative"] for r in chain) == 1
    rep = next(r for r in chain if r["is_representative"])
    assert rep["member_id"] == min(r["member_id"] for r in chain)  # keep: lowest_id
    assert all(r["path"] and r["cluster_size"] == len(chain) for r in chain)
    near_ids = set(near.read(["id"]).column("id").to_pylist())
    assert rep["member_id"] in near_ids and not ({r["member_id"] for r in chain} - {rep["member_id"]}) & near_ids
    # the planted near copy is clustered with its source
    near_copy = next(r for r in cl if r["path"].endswith("near_copy.py"))
    src = next(r for r in cl if r["path"].endswith(corpus["near_src"]) and "/dup/" not in r["path"])
    assert near_copy["cluster_id"] == src["cluster_id"]
    # every cluster member but the representative was dropped, and only those
    dropped = {r["member_id"] for r in cl if not r["is_representative"]}
    assert near.manifest["counts"]["dropped"] == ({"near_duplicate": len(dropped)} if dropped else {})
    assert near_ids == ex_ids - dropped
    assert near.manifest["cc_rounds"] >= 2
    # same config again: a cache hit
    runs2 = run_pipeline(cfg, progress=False)
    assert [r.cached for r in runs2] == [True, True, True]


@pytest.mark.ray
def test_edge_cases(ray_local, tmp_path):
    store = Store(tmp_path / "store")
    # empty input: a valid, empty version
    empty = _make_dataset(store, [], tag="empty")
    for stage in ("exact_dedup", "near_dedup"):
        v, _ = _run_stage(store, stage, empty)
        assert v.manifest["counts"] == {"in": 0, "out": 0, "dropped": {}, "quarantined": {}}
        assert v.read(["id"]).num_rows == 0
    # a single document: kept
    single = _make_dataset(store, ["def f():\n    return 1\n"], tag="single")
    for stage in ("exact_dedup", "near_dedup"):
        v, _ = _run_stage(store, stage, single)
        assert v.manifest["counts"]["out"] == 1
    # shorter than the shingle size: one shingle of all the tokens, so equal short texts cluster and
    # different ones do not; texts without any word token have no signature and are never near-duplicates
    short = _make_dataset(store, ["x = 1", "X  =  1", "y = 2", "", "+++", "---"], rows_per_shard=2, tag="short")
    v, _ = _run_stage(store, "near_dedup", short)
    _check_counts(v)
    kept = set(v.read(["id"]).column("id").to_pylist())
    assert kept == {"d00000", "d00002", "d00003", "d00004", "d00005"}
    assert v.manifest["docs_without_shingles"] == 3
    # 100 identical documents over 10 shards: one survives, in one cluster of 100 (linked as a star)
    same = _make_dataset(store, ["import os\nprint(os.getcwd())  # same\n"] * 100, tag="same")
    for stage, reason in (("exact_dedup", "exact_duplicate"), ("near_dedup", "near_duplicate")):
        v, _ = _run_stage(store, stage, same)
        assert v.manifest["counts"]["out"] == 1 and v.manifest["counts"]["dropped"] == {reason: 99}
        assert v.read(["id"]).column("id").to_pylist() == ["d00000"]
    cl = v.read_table("clusters")
    assert cl.num_rows == 100 and set(cl.column("cluster_size").to_pylist()) == {100}


# --------------------------------------------------------------------------------------------- reliability
_DRIVER = textwrap.dedent(
    """
    import sys, json
    import ray
    from factory.config import build_config
    from factory.pipeline import StageContext
    from factory.runtime.registry import load_runners
    from factory.store import Store
    root, vid, address = sys.argv[1:4]
    ray.init(address=address, log_to_driver=False)
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    store = Store(root)
    cfg = build_config({"output_root": root, "dedup": {"partitions": 6}})
    ctx = StageContext(cfg, store, "near_dedup", {"dataset": store.get(vid)}, progress=False)
    v, _ = load_runners()["near_dedup"](ctx)
    print("DONE", v.id)
    """
)


def _texts_sample(k: int) -> list[str]:
    texts = [p.read_text() for p in _stdlib_sample(k)]
    a, b, c = _chain()
    return texts + [a, texts[3] + "\n# tweak\n", b, texts[7], c]


def _result(v) -> tuple:
    ids = sorted(v.read(["id"]).column("id").to_pylist())
    cl = v.read_table("clusters").sort_by([("cluster_id", "ascending"), ("member_id", "ascending")]).to_pylist()
    return ids, cl, v.manifest["counts"]


@pytest.mark.ray
def test_rerun_after_driver_kill_recomputes_only_unfinished(ray_local, tmp_path):
    texts = _texts_sample(150)
    ref_store = Store(tmp_path / "ref")
    ref, _ = _run_stage(ref_store, "near_dedup", _make_dataset(ref_store, texts, rows_per_shard=8, tag="s"), partitions=6)

    store = Store(tmp_path / "store")
    data = _make_dataset(store, texts, rows_per_shard=8, tag="s")
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(script), str(store.root), data.id, address], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done_dir = None
    deadline = time.time() + 120
    seen: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        stg = list((store.root / "staging").glob("near_dedup-*/_done"))
        if stg:
            done_dir = stg[0]
            seen = [p.stem for p in done_dir.glob("bucket.*.json")]
            if seen:
                break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # tasks the dead driver had in flight may still finish and leave markers: wait until none appear for 1.5 s
    last, stable_since = None, time.time()
    while time.time() - stable_since < 1.5:
        now = sorted(p.name for p in done_dir.iterdir())
        if now != last:
            last, stable_since = now, time.time()
        time.sleep(0.1)
    sig_done = len(list(done_dir.glob("sig.*.json")))
    assert sig_done == len(data.data_files())  # the kill landed after the signature phase
    assert not any(p.name.startswith("near_dedup") for p in (store.root / "versions").iterdir())

    v, cached = _run_stage(store, "near_dedup", data, partitions=6)
    assert not cached
    tasks = v.manifest["tasks"]
    assert tasks["sig"] == {"ran": 0, "reused": sig_done}
    assert tasks["bucket"]["reused"] >= len(seen) and tasks["bucket"]["ran"] + tasks["bucket"]["reused"] == 6
    assert tasks["apply"]["reused"] == 0
    assert _result(v) == _result(ref)


_CLUSTER = textwrap.dedent(
    """
    import sys, json, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from factory.config import build_config
    from factory.pipeline import StageContext
    from factory.runtime.registry import load_runners
    from factory.store import Store
    ref_root, root, vid = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    run = load_runners()["near_dedup"]

    def stage(root):
        store = Store(root)
        cfg = build_config({"output_root": root, "dedup": {"partitions": 4}})
        return run(StageContext(cfg, store, "near_dedup", {"dataset": store.get(vid)}, progress=False))[0]

    ref = stage(ref_root)
    killed = {}

    def killer():
        t0 = time.time()
        while time.time() - t0 < 120:
            done = list(Path(root, "staging").glob("near_dedup-*/_done/sig.*.json"))
            if done:
                killed["after_markers"] = len(done)
                cluster.remove_node(worker)
                killed["at"] = time.time() - t0
                return
            time.sleep(0.01)

    th = threading.Thread(target=killer)
    th.start()
    v = stage(root)
    th.join()
    print("RESULT", json.dumps({"ref": ref.id, "v": v.id, "killed": killed, "nodes": len([n for n in ray.nodes() if n["Alive"]])}))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.slow
def test_worker_node_killed_mid_dedup(tmp_path):
    """Two-node Ray cluster (own processes, not the session's Ray); the worker node is removed while the
    signature phase runs.  The stage completes on the head node and its output equals a fault-free run."""
    texts = _texts_sample(200)
    ref_store, store = Store(tmp_path / "ref"), Store(tmp_path / "store")
    data = _make_dataset(ref_store, texts, rows_per_shard=6, tag="n")
    _make_dataset(store, texts, rows_per_shard=6, tag="n")
    script = tmp_path / "cluster.py"
    script.write_text(_CLUSTER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, str(script), str(ref_store.root), str(store.root), data.id],
        env=env, capture_output=True, text=True, timeout=420,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert out.returncode == 0 and line, (out.stdout[-3000:], out.stderr[-5000:])
    res = json.loads(line[len("RESULT ") :])
    assert res["killed"].get("after_markers", 0) >= 1 and res["nodes"] == 1, res
    ref, v = ref_store.get(res["ref"]), store.get(res["v"])
    assert ref.id == v.id
    assert _result(v) == _result(ref)
    assert v.manifest["counts"]["dropped"].get("near_duplicate", 0) >= 3
