"""ray_cluster.yaml is a real cluster-launcher file: it passes Ray's own schema validation."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load()))  # what `ray up` does first; raises on a structural error


def test_cluster_yaml_has_head_cpu_and_gpu_workers_that_install_this_project():
    cfg = load()
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    assert {"cpu_worker", "gpu_worker"} <= set(nodes)
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install -e ." in setup and "torch==2.13.0" in setup
    assert any(".[gpu]" in c for c in cfg["worker_setup_commands"])


def test_schema_validation_can_fail():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load()
    cfg["available_node_types"]["head"]["min_workers"] = "many"
    with pytest.raises(Exception, match="many"):
        validate_config(prepare_config(cfg))
