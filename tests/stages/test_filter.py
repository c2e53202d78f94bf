"""The filter stage's pure logic: threshold and exact top-fraction, rejected table, reconciled counts."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from factory.config import FilterConfig, build_config
from factory.config import ConfigError
from factory.stages.filter import Filter, FilterError, plan_cutoff
from factory.store import check_counts, merge_counts


def scored(n: int = 100, seed: int = 0, ties: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    if ties:
        s = np.round(s * 4) / 4  # only 5 distinct values
    return pa.table(
        {
            "id": [f"doc{i:04d}" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
            "quality_score": pa.array(s, pa.float64()),
            "quality_model": ["clf-1"] * n,
        }
    )


def run_shards(f: Filter, table: pa.Table, size: int):
    results = [f.filter_table(table.slice(i, size)) for i in range(0, table.num_rows, size)]
    counts = merge_counts(r.counts for r in results)
    kept = pa.concat_tables([r.table for r in results])
    rejected = pa.concat_tables([r.side["rejected"] for r in results])
    return kept, rejected, counts


def test_threshold_keeps_at_or_above_and_rejects_the_rest_with_scores():
    t = scored()
    f = Filter(plan_cutoff(FilterConfig(threshold=0.7)))
    kept, rejected, counts = run_shards(f, t, 30)
    s = np.asarray(t.column("quality_score"))
    assert kept.num_rows == int((s >= 0.7).sum())
    assert min(kept.column("quality_score").to_pylist()) >= 0.7
    assert max(rejected.column("quality_score").to_pylist()) < 0.7
    assert set(rejected.column("reason").to_pylist()) == {"below_threshold"}
    assert rejected.column_names == t.column_names + ["reason"]  # the whole row, score included
    check_counts(counts)
    assert counts == {"in": 100, "out": kept.num_rows, "dropped": {"below_threshold": 100 - kept.num_rows}, "quarantined": {}}
    assert sorted(kept.column("id").to_pylist() + rejected.column("id").to_pylist()) == t.column("id").to_pylist()


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5, 0.333, 1.0])
def test_top_fraction_is_exact_with_ties_and_independent_of_sharding(frac):
    t = scored(101, seed=3, ties=True)
    ids, s = t.column("id").to_pylist(), np.asarray(t.column("quality_score"))
    cut = plan_cutoff(FilterConfig(top_fraction=frac), ids, s)
    want_k = math.ceil(frac * 101)
    assert cut.keep == want_k
    kept_sets = []
    for size in (7, 50, 101):
        kept, rejected, counts = run_shards(Filter(cut), t, size)
        assert kept.num_rows == want_k
        check_counts(counts)
        if want_k < 101:
            assert counts["dropped"] == {"below_top_fraction": 101 - want_k}
            assert set(rejected.column("reason").to_pylist()) == {"below_top_fraction"}
            assert min(kept.column("quality_score").to_pylist()) >= max(rejected.column("quality_score").to_pylist())
        kept_sets.append(set(kept.column("id").to_pylist()))
    assert kept_sets[0] == kept_sets[1] == kept_sets[2]
    # ties at the cut-off go to the smaller ids
    order = sorted(range(101), key=lambda i: (-s[i], ids[i]))
    assert kept_sets[0] == {ids[i] for i in order[:want_k]}


def test_top_fraction_wins_over_threshold():
    t = scored()
    cfg = FilterConfig(threshold=0.99, top_fraction=0.5)
    cut = plan_cutoff(cfg, t.column("id").to_pylist(), np.asarray(t.column("quality_score")))
    kept, _, counts = run_shards(Filter(cut), t, 100)
    assert kept.num_rows == 50 and "below_top_fraction" in counts["dropped"]


def test_missing_scores_are_rejected_with_their_own_reason():
    t = pa.table({"id": ["a", "b", "c"], "quality_score": pa.array([0.9, None, float("nan")], pa.float64())})
    for cut in (plan_cutoff(FilterConfig(threshold=0.5)), plan_cutoff(FilterConfig(top_fraction=1.0), ["a", "b", "c"], np.array([0.9, np.nan, np.nan]))):
        r = Filter(cut).filter_table(t)
        assert r.table.column("id").to_pylist() == ["a"]
        assert r.counts["dropped"] == {"missing_score": 2}
        check_counts(r.counts)


def test_unscored_rows_and_empty_rules_are_clear_errors():
    with pytest.raises(FilterError, match="run the score stage before filter"):
        Filter(plan_cutoff(FilterConfig(threshold=0.5))).filter_table(pa.table({"id": ["a"], "text": ["x"]}))
    with pytest.raises(ConfigError, match="set threshold or top_fraction"):
        build_config({"filter": {"threshold": None}})


def test_empty_shard():
    t = scored(0)
    r = Filter(plan_cutoff(FilterConfig(threshold=0.5))).filter_table(t)
    assert r.counts == {"in": 0, "out": 0, "dropped": {}, "quarantined": {}}
