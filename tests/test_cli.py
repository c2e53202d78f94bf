import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import yaml

from factory.cli import main
from factory.store import BASE_SCHEMA, Store

REPO = Path(__file__).resolve().parents[1]


def test_help_for_every_subcommand():
    for sub in ["run", "validate", "submit", "jobs", "versions"]:
        r = subprocess.run([sys.executable, "-m", "factory.cli", sub, "--help"], capture_output=True, text=True,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0 and "usage: factory" in r.stdout, (sub, r.stderr)


def test_validate_ok_and_error_exit_codes(tmp_path, capsys):
    assert main(["validate", str(REPO / "pipelines" / "quickstart.yaml")]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dedup": {"num_perm": "x"}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "dedup.num_perm" in err and str(bad) in err
    assert main(["validate", str(REPO / "pipelines" / "quickstart.yaml"), "--set", "ingest.nope=1"]) == 2
    assert "ingest.nope: unknown key" in capsys.readouterr().err


def _commit(store, vid, parent, n):
    w = store.begin(vid, {"kind": "dataset", "stage": vid.split("-")[0], "parent": parent})
    t = pa.Table.from_pylist([{"id": str(i), "text": "t", "source": "s", "meta": "{}"} for i in range(n)], schema=BASE_SCHEMA)
    w.write_shard("part-00000", t, {"in": n, "out": n})
    dropped = {} if parent is None else {"near_duplicate": 10 - n}
    w.commit({"in": 10 if parent else n, "out": n, "dropped": dropped, "quarantined": {}})


def test_versions_list_show_diff_lineage(tmp_path, capsys):
    store = Store(tmp_path)
    _commit(store, "ingest-111", None, 10)
    _commit(store, "near_dedup-222", "ingest-111", 7)
    assert main(["versions", "list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ingest-111" in out and "near_dedup-222" in out
    assert main(["versions", "lineage", "222", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("near_dedup-222") and lines[1].strip().startswith("ingest-111")
    assert main(["versions", "diff", "ingest-111", "near_dedup-222", "--root", str(tmp_path)]) == 0
    assert '"only_in_a": 3' in capsys.readouterr().out
    assert main(["versions", "show", "ingest-111", "--root", str(tmp_path)]) == 0
    assert '"stage": "ingest"' in capsys.readouterr().out
    assert main(["versions", "verify", "ingest-111", "--root", str(tmp_path)]) == 0
    assert main(["versions", "show", "nope", "--root", str(tmp_path)]) == 1
    assert "no version 'nope'" in capsys.readouterr().err


def test_prompts_list_show_render(capsys):
    assert main(["prompts", "list"]) == 0
    out = capsys.readouterr().out
    assert "annotate/phi1_code@1" in out and "annotate/fineweb_edu@1" in out
    assert main(["prompts", "render", "annotate/phi1_code", "--var", "text=def add(a, b): return a + b"]) == 0
    out = capsys.readouterr().out
    assert "learn basic coding concepts" in out and "def add(a, b)" in out and "<source>" in out


def test_rows_prints_a_version_and_a_side_table(tmp_path, capsys):
    store = Store(tmp_path)
    _commit(store, "ingest-111", None, 3)
    assert main(["rows", "ingest-111", "--root", str(tmp_path), "--id", "2"]) == 0
    assert '"id": "2"' in capsys.readouterr().out


def test_run_refuses_a_dashboard_address(capsys):
    assert main(["run", str(REPO / "pipelines" / "quickstart.yaml"), "--address", "http://127.0.0.1:8265"]) == 2
    assert "factory submit" in capsys.readouterr().err
