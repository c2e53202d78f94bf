"""`factory submit` against a real Ray head started by the test (`ray start --head --block`)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are chosen, so none is handed out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def ray_head():
    # a short temp dir: Ray's unix sockets live under it and socket paths are limited to ~107 bytes
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    gcs, dash, *agent_ports = free_ports(7)
    ray_bin = Path(sys.executable).with_name("ray")
    # as with an activated virtualenv: the job's `python` is the one this project is installed in
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{ray_bin.parent}{os.pathsep}{os.environ['PATH']}"}
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp}",
         # a second Ray on this machine (the session's ray_local) holds the default agent ports: the job agent
         # of this head would never come up and every submission would get 500 "No available agent"
         *(f"--{name}={port}" for name, port in zip(("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "metrics-export-port", "runtime-env-agent-port",
                                                     "ray-client-server-port"), agent_ports))],
        env=env,
        start_new_session=True,  # our own process group: stopping it never touches other Ray instances
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{dash}"
    # probed from a fresh process: Ray reads its auth mode once per process, at import
    probe = f"from factory.runtime.jobs import client; client({address!r}).list_jobs()"
    deadline = time.time() + 240  # a loaded 2-core CI box can take minutes
    while True:
        ok = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0
        if ok:
            break
        else:
            if time.time() > deadline or head.poll() is not None:
                if head.poll() is None:
                    os.killpg(head.pid, signal.SIGKILL)
                pytest.fail(f"the Ray head did not come up (exit {head.poll()})")
            time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def factory(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_submit_runs_a_pipeline_as_a_ray_job_and_logs_are_retrievable(tmp_path, ray_head):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]:
        shutil.copy(f, corpus / f.name)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({"name": "job", "output_root": str(tmp_path / "out"),
                                   "ingest": {"inputs": [{"path": str(corpus)}], "rows_per_shard": 10}}))
    sub = factory("submit", str(cfg), "--address", ray_head, "--job-id", "factory-test-1", "--wait", "--timeout", "400")
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "SUCCEEDED" in sub.stdout
    status = factory("jobs", "status", "factory-test-1", "--address", ray_head)
    assert '"status": "SUCCEEDED"' in status.stdout
    logs = factory("jobs", "logs", "factory-test-1", "--address", ray_head)
    assert "ingest" in logs.stdout and "store:" in logs.stdout  # the run's summary table
    versions = factory("versions", "list", "--root", str(tmp_path / "out"))
    assert "ingest-" in versions.stdout and "30" in versions.stdout
