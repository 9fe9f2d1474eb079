"""Configuration: conf/base.yaml defaults, an optional preset, then run-config overrides.

conf/ is the single source of truth for every default. `pyproject.toml` declares every key
(Flower rejects unknown run-config keys) with the empty string, which means "take the value from
conf/". Each key has one type (its value's in base.yaml) and at most one rule (`RULES`). Code
reads sections as attributes and every key with item access (most keys have hyphens):
`cfg.train["lr-schedule"]`, `cfg["seed"]`.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from feddat_flwr.attacks import ATTACKS, attacked_partitions
from feddat_flwr.data.partition import PARTITIONERS
from feddat_flwr.data.views import VIEWS
from feddat_flwr.fedpft.settings import fedpft_conflicts
from feddat_flwr.methods import METHODS, get_method, schedules
from feddat_flwr.model.backbone import ADAPTER_KINDS, DEVICES
from feddat_flwr.privacy import PRIVACY_MODES, privacy_conflicts
from feddat_flwr.records import WEIGHT_KEYS
from feddat_flwr.robustness import AGGREGATIONS
from feddat_flwr.training.schedule import LR_SCHEDULES

# conf/ sits at the repository root (and so in the Flower app bundle) and is shipped inside the
# installed package as feddat_flwr/conf/ (pyproject.toml: force-include); it is the same files.
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"
PRESET_DIR = CONF_DIR / "presets"
FROM_CONF = ""  # run-config value meaning "use the value from conf/"

Rule = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def one_of(names: Callable[[], Iterable[str]]) -> Rule:
    """The value must be one of the names a registry owns (read when checked)."""
    def rule(value: Any) -> str | None:
        allowed = list(names())
        return None if value in allowed else f"is {value!r}; allowed: {', '.join(allowed)}"
    return rule


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0, got {value!r}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def unit_interval(value: Any) -> str | None:
    return None if 0 <= value <= 1 else f"must be in [0, 1], got {value!r}"


def fraction_below_one(value: Any) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value!r}"


def module_list(value: Any) -> str | None:
    return None if str(value).strip(" ,") else "is empty; give comma-separated module names"


def absolute_or_empty(value: Any) -> str | None:
    return None if not value or Path(value).is_absolute() else f"must be an absolute path, got {value!r}"


def probability(value: Any) -> str | None:
    return None if 0 < value < 1 else f"must be in (0, 1), got {value!r}"


def below_half(value: Any) -> str | None:
    return None if 0 <= value < 0.5 else f"must be in [0, 0.5), got {value!r}"


def partition_ids(value: Any) -> str | None:
    try:
        attacked_partitions(value)
    except ValueError as exc:
        return str(exc).removeprefix("'attack.partitions' ")
    return None


# The one validation rule of each key that has one (the type rule, "same type as in
# conf/base.yaml", applies to every key). Choice lists come from the registries that own them.
RULES: dict[str, Rule] = {
    "method": one_of(lambda: METHODS),
    "num-rounds": positive,
    "output-dir": absolute_or_empty,
    "resume-from": absolute_or_empty,
    "client-state-dir": absolute_or_empty,
    "adapter.kind": one_of(lambda: ADAPTER_KINDS),
    "adapter.bottleneck-width": positive,
    "lora.rank": positive,
    "lora.alpha": positive,
    "lora.dropout": unit_interval,
    "lora.target-modules": module_list,
    "feddat.lambda": unit_interval,
    "feddat.kd-temperature": positive,
    "feddat.task-weight": non_negative,
    "feddat.kd-weight": non_negative,
    "feddat.schedule": one_of(schedules),
    "fedprox.mu": non_negative,
    "fedpft.ffn-width": non_negative,
    "fedpft.public-data": absolute_or_empty,
    "fedpft.distill-steps": non_negative,
    "fedpft.distill-lr": positive,
    "fedpft.batch-size": positive,
    "fedpft.align-every": non_negative,
    "fedpft.align-keep": unit_interval,
    "fedpft.align-steps": non_negative,
    "fedpft.align-lr": positive,
    "train.lr": positive,
    "train.lr-schedule": one_of(lambda: LR_SCHEDULES),
    "train.min-lr-ratio": unit_interval,
    "train.weight-decay": non_negative,
    "train.beta1": unit_interval,
    "train.beta2": unit_interval,
    "train.batch-size": positive,
    "train.local-epochs": positive,
    "train.eval-batch-size": positive,
    "train.num-workers": non_negative,
    "train.device": one_of(lambda: DEVICES),
    "data.path": absolute_or_empty,
    "data.test-fraction": fraction_below_one,
    "data.max-answers": positive,
    "data.partitioner": one_of(lambda: PARTITIONERS),
    "data.client-views": one_of(lambda: VIEWS),
    "data.dirichlet-alpha": positive,
    "data.max-train": non_negative,
    "data.max-test": non_negative,
    "data.validation-fraction": fraction_below_one,
    "strategy.weighting": one_of(lambda: WEIGHT_KEYS),
    "strategy.fraction-train": unit_interval,
    "strategy.min-train-clients": positive,
    "strategy.min-available-clients": positive,
    "strategy.eval-every": positive,
    "strategy.aggregation": one_of(lambda: AGGREGATIONS),
    "strategy.trim-fraction": below_half,
    "strategy.krum-malicious": non_negative,
    "strategy.max-update-norm": non_negative,
    "strategy.min-valid-replies": positive,
    "privacy.mode": one_of(lambda: PRIVACY_MODES),
    "privacy.noise-multiplier": non_negative,
    "privacy.clipping-norm": positive,
    "privacy.target-delta": probability,
    "privacy.target-epsilon": non_negative,
    "privacy.target-clipped-quantile": unit_interval,
    "privacy.clip-norm-lr": positive,
    "privacy.clipped-count-stddev": non_negative,
    "attack.kind": one_of(lambda: ATTACKS),
    "attack.partitions": partition_ids,
    "attack.scale": positive,
}


def cross_key_problems(flat: Mapping[str, Any]) -> list[str]:
    """Combinations of values that are not allowed together (each key's own rule passed)."""
    return privacy_conflicts(flat, get_method(flat["method"]).communicates) + fedpft_conflicts(flat)


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
    for key, rule in RULES.items():
        problem = rule(flat[key])
        if problem is not None:
            raise ConfigError(f"'{key}' {problem}.")
    problems = cross_key_problems(flat)
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def load_config(run_config: Mapping[str, Any] | None = None) -> DictConfig:
    """Resolved, validated, read-only configuration.

    `run_config` is Flower's run config (flat dotted keys); empty-string values mean
    "from conf/". A `preset` names a file in conf/presets/ applied before the overrides.
    Resolved once per distinct run config and process (a ClientApp resolves it for every message,
    in its handler and in each mod); the result is read-only, so it is shared.
    """
    return _resolve(tuple(sorted(dict(run_config or {}).items())))


@functools.lru_cache(maxsize=64)
def _resolve(run_config: tuple[tuple[str, Any], ...]) -> DictConfig:
    flat = flatten(OmegaConf.load(CONF_DIR / "base.yaml"))
    overrides = {k: v for k, v in run_config if v != FROM_CONF}
    for key in overrides:
        if key not in flat:
            raise _unknown_key(key, sorted(flat), "the run config")
    preset = overrides.get("preset", flat["preset"])
    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"Unknown preset {preset!r}; available: {', '.join(available_presets())}.")
        _apply(flat, flatten(OmegaConf.load(path)), f"preset {path.name}")
    method = overrides.get("method", flat["method"])
    if method in METHODS:  # an unknown one is reported by its rule
        _apply(flat, METHODS[method].settings, f"method {method}")
    _apply(flat, overrides, "the run config")
    _validate(flat)
    cfg = OmegaConf.create({})
    for key, value in flat.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
