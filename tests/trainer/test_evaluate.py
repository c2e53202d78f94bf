from __future__ import annotations

import json
import time
from itertools import combinations

import pytest

from trainer.evaluate import (EvalConfig, evaluate_probe, humaneval_program, load_humaneval, pass_at_k,
                              truncate_completion)
from trainer.sandbox import network_isolation, run_program


def test_sandbox_kills_infinite_loop():
    t = time.time()
    r = run_program("while True:\n    pass\n", timeout_s=1.5)
    assert r.status == "timeout" and not r.passed
    assert time.time() - t < 1.5 + 6  # the timeout plus process start-up on a busy machine, not a hang


def test_sandbox_kills_child_processes_too_on_timeout():
    # even if spawning were allowed, the whole process group dies; here spawning is blocked outright
    r = run_program("import os\nos.fork()\nwhile True: pass\n", timeout_s=1.0)
    assert r.status == "blocked" and "process creation blocked" in r.stderr


def test_sandbox_stops_memory_hog():
    t = time.time()
    r = run_program("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n", timeout_s=10, memory_mb=300)
    assert r.status == "memory" and "MemoryError" in r.stderr
    assert time.time() - t < 9  # stopped by the address-space limit, before the 10 s wall clock


@pytest.mark.parametrize("prog", [
    "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n",
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.connect(('127.0.0.1', 22))\n",
    "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n",
])
def test_sandbox_blocks_network(prog):
    r = run_program(prog, timeout_s=5)
    assert not r.passed and r.status == "blocked", r.stderr
    assert "network blocked" in r.stderr
    assert network_isolation() in ("unshare-n+audit-hook", "audit-hook")


def test_sandbox_runs_in_a_temp_dir_and_blocks_writes_outside(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_program(f"open({str(target)!r}, 'w').write('x')\n")
    assert r.status == "blocked" and not target.exists()
    r = run_program("import os\nopen('local.txt', 'w').write('ok')\nprint(os.getcwd())\n")
    assert r.passed and "tbf-sandbox-" in r.stdout


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    probs = load_humaneval()
    assert len(probs) == 164
    for p in probs[:3]:
        assert run_program(humaneval_program(p, p["canonical_solution"])).passed
        assert run_program(humaneval_program(p, "    return None\n")).status == "failed"


def test_pass_at_k_matches_brute_force():
    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 2), (10, 3, 5), (4, 4, 2), (6, 1, 6)]:
        samples = [1] * c + [0] * (n - c)
        combos = list(combinations(range(n), k))
        brute = sum(any(samples[i] for i in cb) for cb in combos) / len(combos)
        assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_truncate_at_stop_sequences():
    assert truncate_completion("    return x\n\ndef other():\n    pass") == "    return x\n"
    assert truncate_completion("    return x\nprint(1)") == "    return x"


def test_evaluate_probe_end_to_end(trained_probe, token_dir):
    out, _ = trained_probe
    cfg = EvalConfig(val_max_windows=16, ref_max_windows=16, humaneval_problems=2, n_samples=2,
                     temperature=0.8, ks=(1, 2), max_new_tokens=24, timeout_s=3)
    res = evaluate_probe(out, token_dir, cfg)
    assert 4.0 < res["val_loss"] < 10.5 and 4.0 < res["ref_loss"] < 11.0
    he = res["humaneval"]
    assert he["problems"] == 2 and sum(he["statuses"].values()) == 4
    assert set(res["pass_at_k"]) == {"pass@1", "pass@2"} and 0.0 <= res["pass_at_k"]["pass@1"] <= 1.0
    samples = [json.loads(l) for l in (out / "humaneval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["task_id"] for s in samples} == {"HumanEval/0", "HumanEval/1"}
    assert json.loads((out / "eval.json").read_text())["ref_loss"] == res["ref_loss"]
