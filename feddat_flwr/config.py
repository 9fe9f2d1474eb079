"""Configuration: conf/base.yaml defaults, an optional preset, then run-config overrides.

conf/ is the single source of truth. `pyproject.toml` declares every key (Flower rejects
unknown run-config keys) with the empty string, which means "take the value from conf/".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PRESET_DIR = CONF_DIR / "presets"
FROM_CONF = ""  # run-config value meaning "use the value from conf/"

# FedDAT, its ablations and the baselines that share the harness (see feddat_flwr/train.py).
METHODS = ("feddat", "feddat-no-kd", "feddat-no-local", "fedavg", "fedprox", "local-only")
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "feddat.schedule": ("reference", "fast"),
    "train.optimizer": ("adamw",),
    "train.lr-schedule": ("cosine", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
    "data.dataset": ("easy-vqa",),
    "data.partitioner": ("iid", "dirichlet", "question-type"),
    "data.client-views": ("same", "domain", "task"),
    "strategy.weighting": ("num-examples", "uniform"),
}
POSITIVE = (
    "num-rounds", "lora.rank", "lora.alpha", "feddat.kd-temperature", "train.lr",
    "train.batch-size", "train.local-epochs", "train.eval-batch-size",
    "data.dirichlet-alpha", "strategy.min-train-clients",
    "strategy.min-available-clients", "strategy.eval-every",
)
NON_NEGATIVE = (
    "feddat.task-weight", "feddat.kd-weight", "lora.dropout", "train.weight-decay",
"fedprox.mu", "data.max-train", "data.max-test", "train.min-lr-ratio",
)
UNIT_INTERVAL = ("feddat.lambda", "strategy.fraction-train", "train.beta1", "train.beta2",
                 "train.min-lr-ratio", "lora.dropout")


class ConfigError(ValueError):
    """A configuration value or key that is not allowed."""


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b": value} (the form of Flower's run config)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg)
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _unknown_key(key: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"Unknown configuration key '{key}' in {source}.{hint}")


def _typed(key: str, value: Any, default: Any, source: str) -> Any:
    """`value` converted to the type of `default`, or a ConfigError."""
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        raise ConfigError(
            f"Configuration key '{key}' in {source} must be {expected.__name__} "
            f"(like {default!r}), got {type(value).__name__} {value!r}."
        )
    return value


def _apply(flat: dict[str, Any], overrides: Mapping[str, Any], source: str) -> None:
    for key, value in overrides.items():
        if key not in flat:
            raise _unknown_key(key, sorted(flat), source)
        flat[key] = _typed(key, value, flat[key], source)


def _validate(flat: dict[str, Any]) -> None:
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"'{key}' is {flat[key]!r}; allowed: {', '.join(allowed)}.")
    for key in POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"'{key}' must be > 0, got {flat[key]!r}.")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"'{key}' must be >= 0, got {flat[key]!r}.")
    for key in UNIT_INTERVAL:
        if not 0 <= flat[key] <= 1:
            raise ConfigError(f"'{key}' must be in [0, 1], got {flat[key]!r}.")
    fraction = flat["data.validation-fraction"]
    if not 0 <= fraction < 1:
        raise ConfigError(f"'data.validation-fraction' must be in [0, 1), got {fraction!r}.")
    if not flat["lora.target-modules"].strip():
        raise ConfigError("'lora.target-modules' is empty; give comma-separated module names.")
    if flat["output-dir"] and not Path(flat["output-dir"]).is_absolute():
        raise ConfigError(f"'output-dir' must be an absolute path, got {flat['output-dir']!r}.")


def load_config(run_config: Mapping[str, Any] | None = None) -> DictConfig:
    """Resolved, validated, read-only configuration.

    `run_config` is Flower's run config (flat dotted keys); empty-string values mean
    "from conf/". A `preset` names a file in conf/presets/ applied before the overrides.
    """
    flat = flatten(OmegaConf.load(CONF_DIR / "base.yaml"))
    overrides = {k: v for k, v in dict(run_config or {}).items() if v != FROM_CONF}
    unknown = [k for k in overrides if k not in flat]
    if unknown:
        raise _unknown_key(unknown[0], sorted(flat), "the run config")
    preset = overrides.get("preset", flat["preset"])
    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"Unknown preset {preset!r}; available: {', '.join(available_presets())}.")
        _apply(flat, flatten(OmegaConf.load(path)), f"preset {path.name}")
    _apply(flat, overrides, "the run config")
    _validate(flat)
    cfg = OmegaConf.create({})
    for key, value in flat.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
