"""Submitting a pipeline to a Ray cluster as a Ray Job (the Ray Jobs SDK), and following it.

The job's working_dir carries this project's source (so the cluster runs exactly the submitted code) and the
merged config as ``pipeline.yaml``; the entrypoint is ``python -m factory.cli run pipeline.yaml``.  The output
root is made absolute before submission: on a multi-node cluster it must be storage every node sees.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from factory.config import PipelineConfig

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("factory", "classifiers", "trainer", "prompts", "pipelines")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "factory-data", "*.gguf")


def client(address: str):
    # Ray >= 2.5x clusters require a token by default; `ray.init` picks up a local token by itself, the Jobs
    # client only when told to.  The token is read by Ray from its own file or env, never by us.
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.exists()):
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def package_job(cfg: PipelineConfig) -> Path:
    """A working_dir with the project's source and the merged config."""
    work = Path(tempfile.mkdtemp(prefix="factory-job-"))
    for name in SHIPPED:
        src = REPO / name
        if src.exists():
            shutil.copytree(src, work / name, ignore=IGNORE)
    data = cfg.dump()
    data["output_root"] = str(Path(cfg.output_root).expanduser().resolve())
    data["ray"]["address"] = None  # inside the job, RAY_ADDRESS points at the cluster
    (work / "pipeline.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return work


def submit(
    cfg: PipelineConfig, address: str, job_id: str | None = None, pip: list[str] | None = None, agent_wait_s: float = 120
) -> str:
    work = package_job(cfg)
    runtime_env: dict = {"working_dir": str(work), "env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}}
    if pip:
        runtime_env["pip"] = pip
    c = client(address)
    deadline = time.time() + agent_wait_s
    while True:
        try:
            sid = c.submit_job(
                entrypoint="python -m factory.cli run pipeline.yaml --no-progress",
                runtime_env=runtime_env,
                submission_id=job_id,
                metadata={"pipeline": cfg.name},
            )
            break
        except RuntimeError as e:
            # a head whose dashboard is up before its job agent answers 500 "No available agent"; Ray says retry
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2)
    shutil.rmtree(work, ignore_errors=True)  # uploaded to the cluster's GCS by now
    return sid


def status(address: str, job_id: str) -> str:
    return str(client(address).get_job_status(job_id).value)


def info(address: str, job_id: str) -> dict:
    i = client(address).get_job_info(job_id)
    return {"job_id": job_id, "status": str(i.status.value), "message": i.message, "entrypoint": i.entrypoint}


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    return client(address).stop_job(job_id)


def wait(address: str, job_id: str, timeout_s: float = 600, poll_s: float = 1.0) -> str:
    deadline = time.time() + timeout_s
    while True:
        s = status(address, job_id)
        if s in ("SUCCEEDED", "FAILED", "STOPPED"):
            return s
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} still {s} after {timeout_s}s")
        time.sleep(poll_s)
