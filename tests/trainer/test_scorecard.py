from __future__ import annotations

import json

from trainer.scorecard import compare_rows, compare_scorecards, write_scorecard


def _card(tmp_path, version, seed, val, ref, p1):
    train = {"tokens": 1_000_000, "final_train_loss": val - 0.1, "tokens_per_s": 1234.0, "mfu": None,
             "config": {"preset": "tiny", "seed": seed}, "recipe": {"name": "phi-1"}, "model_config": {}}
    ev = {"val_loss": val, "ref_loss": ref, "pass_at_k": {"pass@1": p1}, "eval_config": {}}
    lineage = [{"version": version, "stage": "filter"}, {"version": "v1", "stage": "ingest"}]
    return write_scorecard(tmp_path, version, lineage, "tiny", seed, train, ev)


def test_scorecard_fields(tmp_path):
    p = _card(tmp_path, "v5", 0, 4.0, 5.0, 0.0)
    card = json.loads(p.read_text())
    for key in ("dataset_version", "lineage", "training_tokens", "final_train_loss", "val_loss", "ref_loss",
                "pass_at_k", "tokens_per_s", "config", "seed", "probe_preset"):
        assert key in card
    assert card["lineage"][1]["stage"] == "ingest" and p.name == "v5__tiny__seed0.json"


def test_compare_marks_noise(tmp_path):
    # v_good is clearly better on val loss (gap >> seed noise); ref loss differs by less than the noise.
    for s, (dv, dr) in enumerate([(0.00, 0.00), (0.01, 0.05), (-0.01, -0.05)]):
        _card(tmp_path, "v_good", s, 3.00 + dv, 5.00 + dr, 0.0)
        _card(tmp_path, "v_bad", s, 3.50 + dv, 5.02 - dr, 0.0)
    _card(tmp_path, "v_single", 0, 3.2, 5.0, 0.0)
    rows = {r["version"]: r for r in compare_rows(json.loads(p.read_text()) for p in tmp_path.glob("*.json"))}
    assert rows["v_good"]["n_seeds"] == 3 and abs(rows["v_good"]["val_loss"][0] - 3.0) < 1e-9
    assert rows["v_good"]["val_loss_verdict"] == "best"
    assert rows["v_bad"]["val_loss_verdict"] == "+0.500"               # real difference
    assert "within noise" in rows["v_bad"]["ref_loss_verdict"] or rows["v_bad"]["ref_loss_verdict"] == "best"
    assert "within noise (<2 seeds)" in rows["v_single"]["val_loss_verdict"]
    table = compare_scorecards([tmp_path])
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["version", "preset", "seeds", "tokens"]
    assert lines[2].startswith("v_good") and "3.000 ± 0.010" in lines[2]
    assert "within noise" in table


def test_every_shipped_probe_config_loads():
    from pathlib import Path

    from trainer.probe import load_probe_config

    shipped = sorted((Path(__file__).resolve().parents[2] / "trainer" / "configs").glob("*.yaml"))
    assert len(shipped) >= 2
    for p in shipped:
        cfg = load_probe_config(p)
        assert cfg.train.recipe in ("phi-1", "phi-1.5") and cfg.seeds, p


def test_a_tie_with_zero_spread_is_within_noise(tmp_path):
    for s in range(2):  # every probe scores pass@1 = 0, as tiny probes do: no difference to report
        _card(tmp_path, "v_a", s, 3.0 + s * 0.01, 5.0, 0.0)
        _card(tmp_path, "v_b", s, 3.5 + s * 0.01, 5.0, 0.0)
    rows = {r["version"]: r for r in compare_rows(json.loads(p.read_text()) for p in tmp_path.glob("*.json"))}
    verdicts = {rows[v]["pass@1_verdict"] for v in rows}
    assert verdicts <= {"best", "+0.000 within noise"} and "+0.000 within noise" in verdicts
