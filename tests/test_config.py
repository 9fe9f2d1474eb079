import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from feddat_flwr.config import CONF_DIR, RULES, ConfigError, available_presets, flatten, load_config
from feddat_flwr.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_declares_exactly_the_conf_keys_with_from_conf_values():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    conf = set(flatten(OmegaConf.load(CONF_DIR / "base.yaml")))
    assert set(declared) == conf, (f"pyproject.toml lacks {sorted(conf - set(declared))}, "
                                   f"has extra {sorted(set(declared) - conf)}")
    assert set(declared.values()) == {""}
    assert "federations" not in pyproject["tool"]["flwr"]


def test_empty_values_take_conf_defaults_and_overrides_apply():
    base = load_config({})
    cfg = load_config({"num-rounds": "", "train.lr": 1, "lora.rank": 4})
    assert cfg["num-rounds"] == base["num-rounds"]
    assert cfg.train["lr"] == 1.0 and isinstance(cfg.train["lr"], float)  # int accepted for float
    assert cfg.lora["rank"] == 4


def test_config_is_read_only():
    cfg = load_config({})
    with pytest.raises(ReadonlyConfigError):
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
def test_every_preset_applies_its_values(preset):
    cfg = flatten(load_config({"preset": preset}))
    values = flatten(OmegaConf.load(CONF_DIR / "presets" / f"{preset}.yaml"))
    assert values and all(cfg[k] == v for k, v in values.items())
    assert cfg["preset"] == preset


def test_overrides_win_over_the_preset_and_the_preset_over_conf():
    base = load_config({})
    assert base.data["dirichlet-alpha"] == 0.5
    assert load_config({"preset": "label-skew"}).data["dirichlet-alpha"] == 0.3
    cfg = load_config({"preset": "label-skew", "data.dirichlet-alpha": 0.9})
    assert cfg.data["dirichlet-alpha"] == 0.9 and cfg.data["partitioner"] == "dirichlet"


def test_every_rule_names_a_conf_key_and_choices_come_from_the_registries():
    keys = set(flatten(OmegaConf.load(CONF_DIR / "base.yaml")))
    assert set(RULES) <= keys
    with pytest.raises(ConfigError, match="allowed: " + ", ".join(METHODS)):
        load_config({"method": "fedsgd"})
    with pytest.raises(ConfigError, match="'feddat.schedule' is 'slow'; allowed: fast, reference"):
        load_config({"feddat.schedule": "slow"})


def test_conf_ships_inside_the_built_wheel(tmp_path):
    """The wheel carries conf/ as feddat_flwr/conf/ (the images pip-install the package)."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    conf = sorted(n for n in names if n.startswith("feddat_flwr/conf/"))
    expected = sorted(f"feddat_flwr/conf/{p.relative_to(CONF_DIR)}" for p in CONF_DIR.rglob("*.yaml"))
    assert conf == expected
