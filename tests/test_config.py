from __future__ import annotations

from pathlib import Path

import pytest

from hitl_plugin.config import load_config, parse_config
from hitl_plugin.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    configs = sorted((REPO / "dags" / "configs").glob("*.yaml"))
    assert configs, "the example config must ship"
    for path in configs:
        cfg = load_config(path)
        assert cfg.dag_id


def test_defaults_suit_a_small_cpu():
    cfg = parse_config({"dag_id": "x"})
    assert cfg.training.imgsz <= 160 and cfg.training.epochs <= 20
    assert cfg.training.device == "auto"
    assert cfg.model.architecture.endswith(".yaml")


def test_bad_field_is_named_with_file_and_path(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text("dag_id: ok\ntraining:\n  epochs: -3\nselection:\n  budjet: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: 2 invalid field(s)")
    assert "training.epochs: Input should be greater than or equal to 1 (got -3)" in text
    assert "selection.budjet: unknown field (check the spelling)" in text
    assert "Traceback" not in text


def test_missing_dag_id_and_yaml_syntax(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("description: nothing\n")
    with pytest.raises(ConfigError, match=r"dag_id: Field required"):
        load_config(path)
    path.write_text("dag_id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"a.yaml: line \d+, column \d+: invalid YAML"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="min_fraction needs labeling.completion: fraction"):
        parse_config({"dag_id": "x", "labeling": {"min_fraction": 0.5}})
    cfg = parse_config({"dag_id": "x", "labeling": {"completion": "fraction", "min_fraction": 0.5}})
    assert cfg.labeling.min_fraction == 0.5


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "sub" / "p.yaml"
    path.parent.mkdir()
    path.write_text("dag_id: x\ndataset:\n  source_dir: ../data\n")
    cfg = load_config(path)
    assert cfg.resolve(cfg.dataset.source_dir) == tmp_path / "sub" / ".." / "data"
