"""Where the pipeline runs: the embedded default never attaches to another Ray running on the machine."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# a second Ray registered as "the latest cluster on this node" (ray.cluster_utils writes
# /tmp/ray/ray_current_cluster, as `ray start` does); then the factory's embedded init in a child process
SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    from ray.cluster_utils import Cluster
    import ray._private.utils as u

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        assert u.read_ray_address() == cluster.address, "the premise: a bare ray.init() would find this cluster"
        child = (
            "from factory.config import RayConfig; from factory.runtime.ray_env import init_ray; "
            "import json; print(json.dumps(init_ray(RayConfig(num_cpus=2), progress=False)))"
        )
        r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=240)
        print("CHILD_RC", r.returncode)
        print("CHILD_OUT", r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "", flush=True)
        print(r.stderr[-2000:], file=sys.stderr)
    finally:
        cluster.shutdown()
    """
)

@pytest.mark.ray
def test_embedded_ray_ignores_a_cluster_already_running_here():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=420)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CHILD_RC 0" in r.stdout, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("CHILD_OUT"))

    resources = json.loads(line.split(" ", 1)[1])
    assert resources["CPU"] == 2.0  # its own instance with the configured CPUs, not the 1-CPU cluster
