import tomllib
from pathlib import Path

import pytest

from feddat_flwr.config import CONF_DIR, ConfigError, available_presets, flatten, load_config
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_declares_exactly_the_conf_keys_with_from_conf_values():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    assert set(declared) == set(flatten(OmegaConf.load(CONF_DIR / "base.yaml")))
    assert set(declared.values()) == {""}
    assert "federations" not in pyproject["tool"]["flwr"]


def test_empty_values_take_conf_defaults_and_overrides_apply():
    base = load_config({})
    cfg = load_config({"num-rounds": "", "train.lr": 1, "lora.rank": 4})
    assert cfg["num-rounds"] == base["num-rounds"]
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted for float
    assert cfg.lora.rank == 4


def test_config_is_read_only():
    cfg = load_config({})
    with pytest.raises(Exception):
        cfg.train.lr = 3.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lrr": 0.1}, r"Unknown configuration key 'train.lrr'.*Did you mean 'train.lr'"),
        ({"train.lr": "fast"}, r"'train.lr' .* must be float .* got str 'fast'"),
        ({"num-rounds": 2.5}, r"'num-rounds' .* must be int .* got float 2.5"),
        ({"train.batch-size": True}, r"'train.batch-size' .* must be int"),
        ({"data.partitioner": "random"}, r"'data.partitioner' is 'random'; allowed: iid, dirichlet"),
        ({"strategy.weighting": "size"}, r"allowed: num-examples, uniform"),
        ({"feddat.lambda": 1.5}, r"'feddat.lambda' must be in \[0, 1\]"),
        ({"train.lr": -1.0}, r"'train.lr' must be > 0"),
        ({"output-dir": "relative/dir"}, r"'output-dir' must be an absolute path"),
        ({"preset": "no-such-preset"}, r"Unknown preset 'no-such-preset'; available:"),
        ({"lora.target-modules": " "}, r"'lora.target-modules' is empty"),
        ({"data.validation-fraction": 1.0}, r"'data.validation-fraction' must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_values_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_loads(preset):
    cfg = load_config({"preset": preset})
    assert cfg.preset == preset


def test_overrides_win_over_preset(tmp_path):
    presets = available_presets()
    if not presets:
        pytest.skip("no presets")
    cfg = load_config({"preset": presets[0], "num-rounds": 77})
    assert cfg["num-rounds"] == 77
