"""A resumable grid of runs, shared by the comparison (compare.py) and the lr tuning (tune.py).

Every cell is a normal run of the app (launch.run_simulation) into its own run directory.
Finished cells are not run again; an unfinished cell's directory is moved aside, never deleted.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddat_flwr.config import available_presets
from feddat_flwr.methods import METHODS, get_method
from feddat_flwr.records import completed_results
from feddat_flwr.tools.cli import add_overrides, parse_override
from feddat_flwr.tools.launch import run_simulation
from feddat_flwr.tools.superlink import RunFailed

# The heterogeneity presets a grid runs by default: all but `iid`, the homogeneous control.
GRID_PRESETS = tuple(p for p in available_presets() if p != "iid")

Cell = tuple[str, Path, dict[str, Any]]  # (label, run directory, run config)
# A grid runs unattended, and a cell with large clients can take an hour on a small CPU machine:
# its limit only ends a run that hangs.
CELL_TIMEOUT = 6 * 3600


@dataclass(frozen=True)
class Row:
    """A grid row: a method, optionally with settings of its own, spelled
    `method[+key=value...]`, e.g. `feddat+adapter.kind=bottleneck` (its run directories and table
    rows are named by this spelling)."""

    spec: str
    method: str
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        return {"method": self.method, **dict(self.settings)}

    @property
    def personalised(self) -> str:
        return get_method(self.method).personalised


def parse_row(text: str) -> Row:
    method, *settings = text.split("+")
    if method not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {method!r} in {text!r}; allowed: {', '.join(METHODS)}")
    return Row(text, method, tuple(parse_override(s) for s in settings))


def run_cells(cells: list[Cell], num_clients: int) -> None:
    """Run each cell unless it finished already; an interrupted cell's directory is kept aside."""
    for i, (label, run_dir, config) in enumerate(cells, 1):
        if completed_results(run_dir):
            print(f"[{i}/{len(cells)}] {label}: done already")
            continue
        if run_dir.exists():  # an interrupted run: keep it, out of the way
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"))
        print(f"[{i}/{len(cells)}] {label} ...", flush=True)
        started = time.monotonic()
        try:
            run_simulation({**config, "output-dir": str(run_dir)}, num_clients=num_clients,
                           work_dir=run_dir.with_name(f".{run_dir.name}.flwr"), stream=False, timeout=CELL_TIMEOUT)
        except RunFailed as exc:
            print(f"    FAILED: {exc}", file=sys.stderr)
            continue
        print(f"    {time.monotonic() - started:.0f} s", flush=True)


def grid_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every grid takes: where, which presets and methods, how many clients."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory of the runs and the summary")
    parser.add_argument("--presets", nargs="+", default=list(GRID_PRESETS), choices=available_presets(),
                        metavar="PRESET", help=f"presets in conf/presets/ (default: {' '.join(GRID_PRESETS)})")
    parser.add_argument("--methods", nargs="+", type=parse_row, default=[parse_row(m) for m in METHODS],
                        metavar="METHOD[+KEY=VALUE...]",
                        help=f"rows: {', '.join(METHODS)} (default: all), each optionally with settings of its "
                             "own, e.g. feddat+adapter.kind=bottleneck")
    parser.add_argument("--clients", type=int, default=5)
    add_overrides(parser, "run-config override for every cell, repeatable")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from finished runs")
    return parser
