"""Configs: every shipped YAML loads; overrides and bad values give clear errors."""

from __future__ import annotations

import pytest

from forgetkit.config import shipped_configs
from forgetkit.errors import ConfigError
from forgetkit.prepare import PrepareConfig, load_prepare_config


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_loads(name):
    config = load_prepare_config(name)
    assert isinstance(config, PrepareConfig)
    assert config.run_dir and config.oracle_splits


def test_demo_and_test_configs_are_shipped():
    assert {"micro", "small"} <= set(shipped_configs())


def test_overrides_set_nested_and_top_level_keys():
    config = load_prepare_config("micro", ["target_mode=lora", "target.epochs=3", "target.lr=1e-4",
                                           "oracle_splits=[forget01,forget05]"])
    assert config.target_mode == "lora"
    assert config.target.epochs == 3.0 and isinstance(config.target.epochs, float)
    assert config.target.lr == 1e-4
    assert config.oracle_splits == ["forget01", "forget05"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("target.epochz=3", "unknown key 'target.epochz'"),
        ("target.batch_size=big", "target.batch_size: expected int"),
        ("target_mode=qlora", "target_mode must be one of"),
        ("oracle_splits=[forget50]", "unknown split 'forget50'"),
        ("train_narratives=3", "expected true/false"),
        ("novalue", "not of the form key=value"),
    ],
)
def test_bad_overrides_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_prepare_config("micro", [override])


def test_unknown_config_name_lists_shipped():
    with pytest.raises(ConfigError, match="shipped: .*micro"):
        load_prepare_config("nonexistent")


def test_config_from_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("run_dir: elsewhere\nmodel:\n  size: micro\n")
    assert load_prepare_config(str(path)).run_dir == "elsewhere"
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_prepare_config(str(path))
