"""Bytes a client exchanges per round (the shared adapter, fp32, each way) vs the backbone size, per adapter kind.

    python benchmarks/communication.py [--results RUN_DIR/results.json] [--out docs/results/communication.md]

Computed from the adapter the app builds (default model and a ViLT-B/32-sized config, random
weights), and, given a results.json, from the bytes the run actually exchanged.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from feddat_flwr.config import load_config
from feddat_flwr.model.adapters import AdapterSpec
from feddat_flwr.model.backbone import ADAPTER_KINDS, AdaptedBackbone, adapter_spec, resolve_model_path
from feddat_flwr.records import Results
from common import random_vilt_b32, report


def sizes(path: str, spec: AdapterSpec) -> tuple[int, int]:
    backbone = AdaptedBackbone(path, spec)
    return backbone.adapter_num_bytes(), backbone.backbone_num_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, help="a run's results.json: report measured bytes too")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    specs = {kind: adapter_spec(load_config({"adapter.kind": kind})) for kind in ADAPTER_KINDS}
    default_path = resolve_model_path("default")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"default (tiny ViLT)": default_path, "ViLT-B/32-sized": random_vilt_b32(Path(tmp), default_path)}
        rows = [(name, kind, *sizes(path, spec)) for name, path in paths.items() for kind, spec in specs.items()]
    lines = ["## Communication per client per round (the shared adapter)", "",
             "Adapters (conf/base.yaml defaults): " + "; ".join(map(str, specs.values())), "",
             "| backbone | adapter | adapter bytes (one way) | backbone bytes | adapter / backbone |",
             "|---|---|---|---|---|"]
    for name, kind, adapter, backbone in rows:
        lines.append(f"| {name} | {kind} | {adapter:,} | {backbone:,} | {100 * adapter / backbone:.3f} % |")
    if args.results:
        results = Results.load(args.results.parent)
        per_client = [(r.bytes_up + r.bytes_down) / max(len(r.clients), 1) for r in results.rounds]
        lines += ["", f"Measured in {args.results}: {statistics.fmean(per_client):,.0f} bytes per client per round "
                  f"(up + down, incl. evaluation messages and record framing) vs backbone "
                  f"{results.info['backbone-bytes']:,} bytes "
                  f"({100 * statistics.fmean(per_client) / results.info['backbone-bytes']:.3f} %)."]
    return report(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
