"""The differential-privacy modes of the shared adapter (`privacy.mode`), Flower-free.

The pieces are Flower's (feddat_flwr.flower.privacy on the server, feddat_flwr.flower.mods on the
client); this module names the modes and says what a mode needs of the rest of the config, so
that the config can refuse a combination before any training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NONE = "none"
CENTRAL_FIXED = "central-fixed"  # clients clip their update to privacy.clipping-norm; the server adds noise
CENTRAL_ADAPTIVE = "central-adaptive"  # the same with the clipping norm adapted each round (Andrew et al.)
PRIVACY_MODES = (NONE, CENTRAL_FIXED, CENTRAL_ADAPTIVE)



def privacy_conflicts(flat: Mapping[str, Any], communicates: bool) -> list[str]:
    """What in a resolved flat config contradicts its privacy mode (empty: nothing).

    Flower's accounting assumes what these rules enforce: every client weighs the same in the
    aggregate (uniform weighting, FedAvg's own aggregation) and something is released at all."""
    if flat["privacy.mode"] == NONE:
        return []
    mode = f"privacy.mode={flat['privacy.mode']}"
    problems = []
    if flat["strategy.weighting"] != "uniform":
        problems.append(f"{mode} needs strategy.weighting=uniform (the accounting assumes every client "
                        f"weighs the same), got {flat['strategy.weighting']!r}")
    if flat["strategy.aggregation"] != "fedavg":
        problems.append(f"{mode} needs strategy.aggregation=fedavg (the noise is calibrated to the mean), "
                        f"got {flat['strategy.aggregation']!r}")
    if not communicates:
        problems.append(f"{mode} has nothing to protect: method {flat['method']!r} sends no shared adapter")
    if flat["privacy.noise-multiplier"] <= 0:
        problems.append(f"{mode} needs privacy.noise-multiplier > 0, got {flat['privacy.noise-multiplier']!r}")
    return problems
