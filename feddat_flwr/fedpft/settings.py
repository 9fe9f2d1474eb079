"""What fedpft-proxy needs of the rest of the configuration (checked before any training)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The LoRA targets of FedPFT: the attention's query, key, value and output projections, the only
# modules whose shapes the proxy shares with the full model (its FFNs are cut).
ATTENTION_MODULES = ("query", "key", "value", "attention.output.dense")
METHOD = "fedpft-proxy"


def fedpft_conflicts(flat: Mapping[str, Any]) -> list[str]:
    if flat["method"] != METHOD:
        return []
    problems = []
    if flat["adapter.kind"] != "lora":
        problems.append(f"method {METHOD} trains LoRA (adapter.kind=lora), got adapter.kind={flat['adapter.kind']!r}")
    targets = [m.strip() for m in str(flat["lora.target-modules"]).split(",") if m.strip()]
    outside = [m for m in targets if m not in ATTENTION_MODULES]
    if outside:
        problems.append(f"method {METHOD} trains LoRA on the attention only (the proxy's FFNs are cut): "
                        f"lora.target-modules {outside} are not among {', '.join(ATTENTION_MODULES)}")
    if flat["model.name-or-path"] != "default" and not flat["fedpft.public-data"]:
        problems.append(f"method {METHOD} with model.name-or-path={flat['model.name-or-path']!r} needs the "
                        "server's public image-text data for its distillations: set fedpft.public-data (a "
                        "dataset in the client dataset format); the built-in corpus is the default model's")
    if flat["privacy.mode"] != "none":
        problems.append(f"method {METHOD} does not combine with privacy.mode={flat['privacy.mode']!r}: Flower's "
                        "clipping mods accept one array record per message, and its messages also carry the "
                        "aligned proxy layers")
    return problems
