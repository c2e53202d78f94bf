"""The pipeline over a real local Ray: deterministic versions, cache hits, and resume after SIGKILL."""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from factory.config import load_config
from factory.pipeline import run_pipeline, summary_table
from factory.store import Store

REPO = Path(__file__).resolve().parents[1]


def stdlib_sample(dest: Path, n: int) -> Path:
    """n real files of the standard library, copied so the test owns them."""
    src = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in src.glob("*.py"))[:n]
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy(f, dest / f.name)
    return dest


def write_cfg(tmp: Path, corpus: Path, root: Path, rows_per_shard: int) -> Path:
    cfg = {
        "name": "t",
        "output_root": str(root),
        "stages": ["ingest"],
        "ray": {"num_cpus": 2},
        "ingest": {"inputs": [{"path": str(corpus), "extensions": [".py"]}], "rows_per_shard": rows_per_shard},
    }
    p = tmp / f"cfg-{root.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def rows_of(store: Store, vid: str):
    return sorted(store.get(vid).read(["id", "text", "source"]).to_pylist(), key=lambda r: r["id"])


@pytest.mark.ray
def test_versions_are_deterministic_and_a_rerun_is_a_cache_hit(tmp_path, ray_local):
    corpus = stdlib_sample(tmp_path / "corpus", 40)
    cfg = load_config(write_cfg(tmp_path, corpus, tmp_path / "out", 10))
    (first,) = run_pipeline(cfg, progress=False)
    (second,) = run_pipeline(cfg, progress=False)
    assert not first.cached and second.cached
    assert first.version.id == second.version.id
    m = first.version.manifest
    assert m["counts"]["in"] == 40 == m["counts"]["out"] + sum(m["counts"]["quarantined"].values())
    assert (first.version.path / "config.yaml").exists()  # the merged config beside the output
    assert "ingest" in summary_table([first], Store(cfg.output_root))


@pytest.mark.ray
@pytest.mark.slow
def test_sigkill_mid_stage_leaves_no_version_and_resume_matches(tmp_path, ray_local):
    corpus = stdlib_sample(tmp_path / "corpus", 300)
    killed_root = tmp_path / "killed"
    cfg_path = write_cfg(tmp_path, corpus, killed_root, 2)  # 150 shards: plenty of time to kill mid-stage
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory.cli", "run", str(cfg_path), "--no-progress"],
        env=env,
        start_new_session=True,  # its local Ray lives in the same process group: kill all, like a crash
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staging = killed_root / "staging"
    deadline = time.time() + 240
    while time.time() < deadline:
        done = list(staging.glob("*/_done/*.json"))
        if len(done) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(killed_root)
    assert done, "the run never finished a shard before the deadline"
    assert not list((killed_root / "versions").glob("*/manifest.json")), "a killed run left a complete-looking version"
    (vdir,) = list(staging.iterdir())
    finished = {p.stem for p in (vdir / "_done").glob("*.json")}
    assert 0 < len(finished) < 150
    before = {s: (vdir / "data" / f"{s}.parquet").stat().st_mtime_ns for s in finished}

    (resumed,) = run_pipeline(load_config(cfg_path), progress=False)
    after = {s: (resumed.version.path / "data" / f"{s}.parquet").stat().st_mtime_ns for s in finished}
    assert before == after, "finished shards were recomputed"

    clean_cfg = load_config(write_cfg(tmp_path, corpus, tmp_path / "clean", 2))
    (clean,) = run_pipeline(clean_cfg, progress=False)
    assert clean.version.id == resumed.version.id
    assert rows_of(store, resumed.version.id) == rows_of(Store(tmp_path / "clean"), clean.version.id)
    assert resumed.version.manifest["counts"] == clean.version.manifest["counts"]


@pytest.mark.ray
def test_hostile_inputs_through_ray_end_in_the_quarantine_table(tmp_path, ray_local):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "mixed"
    d.mkdir()
    (d / "ok.py").write_text("x = 1\n")
    (d / "bad.py").write_bytes(b"\xff\xfe\xfa not utf-8")
    (d / "bin.py").write_bytes(b"\x00" * 64)
    (d / "empty.py").write_text("")
    (d / "docs.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{broken\n")
    pq.write_table(pa.table({"text": ["a", "b"]}), d / "t.parquet")
    (d / "cut.parquet").write_bytes((d / "t.parquet").read_bytes()[:40])
    cfg = load_config(write_cfg(tmp_path, d, tmp_path / "out", 10), ["ingest.inputs.0.extensions=[]"])
    (run,) = run_pipeline(cfg, progress=False)
    counts = run.version.manifest["counts"]
    q = run.version.read_table("quarantine").to_pylist()
    reasons = sorted((Path(r["source"]).name, r["reason"]) for r in q)
    assert reasons == [
        ("bad.py", "undecodable"),
        ("bin.py", "binary"),
        ("cut.parquet", "corrupt_parquet"),
        ("docs.jsonl", "malformed_json"),
        ("empty.py", "empty"),
    ]
    assert counts["out"] == 4  # ok.py, one JSONL line, two Parquet rows
    assert counts["in"] == counts["out"] + sum(counts["quarantined"].values()) == 9
