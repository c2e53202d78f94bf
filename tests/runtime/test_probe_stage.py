"""pack -> probe through the real pipeline on a small real corpus, then `factory probe compare`."""

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from factory.cli import main
from factory.config import build_config
from factory.pipeline import run_pipeline


@pytest.mark.ray
@pytest.mark.slow
def test_pack_and_probe_write_scorecards_with_lineage(tmp_path, ray_local, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]:
        shutil.copy(f, corpus / f.name)
    cfg = build_config(
        {
            "output_root": str(tmp_path / "out"),
            "stages": ["ingest", "exact_dedup", "pack", "probe"],
            "ingest": {"inputs": [{"path": str(corpus)}]},
            "pack": {"seq_len": 64, "val_fraction": 0.2},
            "probe": {"max_tokens": 4096, "humaneval_problems": 1, "max_new_tokens": 8, "seeds": [0, 1]},
        }
    )
    runs = {r.stage: r for r in run_pipeline(cfg, progress=False)}
    tokens, probe = runs["pack"].version, runs["probe"].version
    assert tokens.kind == "tokens" and tokens.manifest["tokens"]["train"] > 4096
    assert probe.kind == "scorecard" and len(probe.manifest["scorecards"]) == 2
    card = json.loads((probe.path / "artifacts" / probe.manifest["scorecards"][0]).read_text())
    assert card["dataset_version"] == runs["exact_dedup"].version.id
    assert [r["stage"] for r in card["lineage"]] == ["pack", "exact_dedup", "ingest"]
    assert card["training_tokens"] >= 4096 and card["val_loss"] > 0 and "pass@1" in card["pass_at_k"]
    assert not list(probe.path.rglob("checkpoint"))

    assert main(["probe", "compare", runs["exact_dedup"].version.id, "--root", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert runs["exact_dedup"].version.id in table and "2" in table  # two seeds, mean ± std
    assert main(["probe", "compare", "ingest", "--root", str(tmp_path / "out")]) == 1
    assert "no scorecards" in capsys.readouterr().err


def _chain(store, stages):
    """Dataset versions written as if by these stages in order; returns them oldest first."""
    import pyarrow as pa

    from factory.store import BASE_SCHEMA

    out, parent = [], None
    for i, stage in enumerate(stages):
        w = store.begin(f"{stage}-{i:04d}", {"kind": "dataset", "stage": stage, "parent": parent, "inputs": {}})
        t = pa.Table.from_pylist([{"id": f"r{i}", "text": "x", "source": "s", "meta": "{}"}], schema=BASE_SCHEMA)
        w.write_shard("part-00000", t, {"in": 1, "out": 1, "dropped": {}, "quarantined": {}})
        out.append(w.commit({"in": 1, "out": 1, "dropped": {}, "quarantined": {}}, schema=BASE_SCHEMA))
        parent = out[-1].id
    return out


@pytest.mark.parametrize("stages,unfiltered,no_synthetic", [
    (["ingest", "near_dedup", "score", "filter", "synthesize", "decontaminate"], 1, 3),
    (["ingest", "near_dedup", "score", "filter"], 1, None),
    (["ingest", "exact_dedup", "synthesize"], None, 1),
    (["ingest", "exact_dedup"], None, None),
])
def test_probe_baselines_follow_the_lineage(tmp_path, stages, unfiltered, no_synthetic):
    from factory.pipeline import StageContext
    from factory.runtime.run_probe import unfiltered_of, without_synthetic_of
    from factory.store import Store

    store = Store(tmp_path / "s")
    chain = _chain(store, stages)
    ctx = StageContext(build_config({"output_root": str(store.root)}), store, "probe", progress=False)
    got_u, got_s = unfiltered_of(ctx, chain[-1]), without_synthetic_of(ctx, chain[-1])
    assert (got_u.id if got_u else None) == (chain[unfiltered].id if unfiltered is not None else None)
    assert (got_s.id if got_s else None) == (chain[no_synthetic].id if no_synthetic is not None else None)
