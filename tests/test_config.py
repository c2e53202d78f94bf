from pathlib import Path

import pytest
import yaml

from factory.config import ConfigError, PipelineConfig, apply_overrides, build_config, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_every_shipped_yaml_loads():
    shipped = sorted((REPO / "pipelines").glob("*.yaml"))
    assert shipped, "no shipped pipeline configs"
    for path in shipped:
        cfg = load_config(path)
        assert isinstance(cfg, PipelineConfig), path


def test_layers_defaults_then_yaml_then_overrides(tmp_path):
    p = write(tmp_path, {"dedup": {"threshold": 0.7, "num_perm": 64}})
    cfg = load_config(p, ["dedup.threshold=0.85"])
    assert cfg.dedup.threshold == 0.85  # override beats YAML
    assert cfg.dedup.num_perm == 64  # YAML beats default
    assert cfg.dedup.ngram == 5  # default


def test_unknown_key_names_file_key_and_choices(tmp_path):
    p = write(tmp_path, {"dedup": {"threshhold": 0.9}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "dedup.threshhold" in msg and "unknown key" in msg and "threshold" in msg


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match="dedupe: unknown key"):
        load_config(write(tmp_path, {"dedupe": {}}))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"dedup": {"num_perm": "many"}}))
    assert "dedup.num_perm" in str(e.value) and "many" in str(e.value)


def test_wrong_type_from_override():
    with pytest.raises(ConfigError, match="ingest.max_doc_bytes"):
        build_config({}, ["ingest.max_doc_bytes=-3"])


def test_missing_input_path(tmp_path):
    p = write(tmp_path, {"ingest": {"inputs": [{"path": "does/not/exist"}]}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "ingest.inputs.0.path" in str(e.value) and "does not exist" in str(e.value)


@pytest.mark.parametrize("key,value,stages", [
    ("annotate.template", "annotate/no_such_template", ["ingest", "annotate"]),
    ("synthesize.exercise_template", "synthesize/nope", ["ingest", "synthesize"]),
    ("synthesize.topics", "lists/no_such_list", ["ingest", "synthesize"]),
])
def test_prompt_refs_of_the_stages_that_run_are_checked_up_front(tmp_path, key, value, stages):
    section, field = key.split(".")
    p = write(tmp_path, {"stages": stages, section: {field: value}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and f"{key}: no " in str(e.value) and value in str(e.value)
    # the same value in a stage that does not run is not an error
    assert load_config(write(tmp_path, {"stages": ["ingest"], section: {field: value}}))


def test_input_missing_required_path(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest.inputs.0.path: required key is missing"):
        load_config(write(tmp_path, {"ingest": {"inputs": [{"format": "jsonl"}]}}))


def test_relative_input_resolves_against_the_config_file(tmp_path):
    (tmp_path / "data").mkdir()
    cfg = load_config(write(tmp_path, {"ingest": {"inputs": [{"path": "data"}]}}))
    assert cfg.ingest.inputs[0].path == str((tmp_path / "data").resolve())


def test_stage_order_and_names_checked():
    with pytest.raises(ConfigError, match="unknown stage 'dedupe'"):
        build_config({"stages": ["ingest", "dedupe"]})
    with pytest.raises(ConfigError, match="first stage must be 'ingest'"):
        build_config({"stages": ["near_dedup"]})
    with pytest.raises(ConfigError, match="order"):
        build_config({"stages": ["ingest", "near_dedup", "exact_dedup"]})


def test_bad_yaml_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2"))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_config({}, ["dedup.threshold"])


def test_override_creates_nested_sections():
    assert apply_overrides({}, ["a.b.c=3"]) == {"a": {"b": {"c": 3}}}


def test_override_indexes_lists(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = build_config({"ingest": {"inputs": [{"path": str(tmp_path / "a")}]}}, [f"ingest.inputs.0.path={tmp_path / 'b'}"])
    assert cfg.ingest.inputs[0].path == str(tmp_path / "b")
    with pytest.raises(ConfigError, match="no such list item"):
        build_config({"ingest": {"inputs": []}}, ["ingest.inputs.3.path=x"])
