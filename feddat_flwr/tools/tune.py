"""Learning rate per preset and method, chosen on a validation split (never on the test set).

    python -m feddat_flwr.tools.tune --out outputs/tuning --presets function domain \\
        --methods feddat fedavg local-only --lrs 0.004 0.008 0.016 -c num-rounds=5
    python -m feddat_flwr.tools.compare --out outputs/comparison --lr-from outputs/tuning/best-lr.json ...

Every preset x method x lr cell is a normal run of the app with `data.validation-fraction`
(--validation-fraction, default 0.2) of each client's training examples held out and evaluated
in place of the test split, after the last round only (tuning reads nothing else), at seed
--seed, into <out>/runs/<preset>/<method>/lr-<lr>/ (resumable like the comparison grid).

The search starts from --lrs. Where a preset and method's best lr is the smallest or the largest
tried, and strictly better than every other, the next one beyond it (half, or double) is tried,
up to --extend times, so that the lr chosen is not an edge of the grid unless that budget ran out
(tuning.md marks such a choice). Every finished lr cell under <out> counts.

Writes tuning.md (mean personalised validation accuracy after the last round, per lr; best in
bold) and best-lr.json ({preset: {method: lr}}).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from feddat_flwr.config import load_config
from feddat_flwr.records import completed_results
from feddat_flwr.results import atomic_write_bytes
from feddat_flwr.tools.cli import unwind_on_sigterm
from feddat_flwr.tools.grid import grid_parser, run_cells

LR_DIR = re.compile(r"lr-(\d[\d.e+-]*)")  # a cell's directory, not one kept aside (lr-<lr>.incomplete-...)


def tune_dir(out: Path, preset: str, method: str, lr: float) -> Path:
    return out / "runs" / preset / method / f"lr-{lr:g}"


def validation_accuracy(out: Path, presets, methods) -> dict[str, dict[str, dict[float, float]]]:
    """{preset: {method: {lr: mean personalised validation accuracy}}} of every finished cell."""
    table: dict[str, dict[str, dict[float, float]]] = {}
    for b in presets:
        for row in methods:
            method_dir = out / "runs" / b / row.spec
            cells = sorted(method_dir.iterdir()) if method_dir.is_dir() else []
            for run_dir in cells:
                match = LR_DIR.fullmatch(run_dir.name)
                if match and (results := completed_results(run_dir)):
                    accuracy = results.rounds[-1].eval[row.personalised]["mean"]
                    table.setdefault(b, {}).setdefault(row.spec, {})[float(match[1])] = accuracy
    return table


def best_lrs(table) -> dict[str, dict[str, float]]:
    """The highest-accuracy lr of each preset and method (ties: the smaller lr)."""
    return {b: {m: max(sorted(accs), key=accs.__getitem__) for m, accs in methods.items()}
            for b, methods in table.items()}


def beyond_edge(accs: Mapping[float, float]) -> float | None:
    """The lr to try next: half the smallest lr tried, or double the largest, where that one is
    strictly better than every other lr tried; None when the best lies inside (or ties)."""
    if len(accs) < 2:
        return None
    best = max(accs.values())
    winners = [lr for lr, acc in accs.items() if acc == best]
    if len(winners) > 1:
        return None
    if winners[0] == min(accs):
        return winners[0] / 2
    if winners[0] == max(accs):
        return winners[0] * 2
    return None


def markdown(table, command: str) -> str:
    lines = ["# Learning rates chosen on a validation split", "", f"Produced by: `{command}`", "",
             "Mean personalised accuracy on the held-out validation examples after the last round; "
             "**bold**: the lr chosen (best-lr.json); `-`: not tried; †: the chosen lr is an edge of "
             "those tried (the search's --extend budget ran out).", ""]
    best = best_lrs(table)
    for b, methods in table.items():
        lrs = sorted({lr for accs in methods.values() for lr in accs})
        lines += [f"## {b}", "", "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
                  "|---|" + "---|" * len(lrs)]
        for m, accs in methods.items():
            edge = "†" if beyond_edge(accs) is not None else ""
            cells = [("**{:.1f}**" + edge if lr == best[b][m] else "{:.1f}").format(100 * accs[lr]) if lr in accs
                     else "-" for lr in lrs]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_tuning(out: Path, presets, methods, lrs: Sequence[float], seed: int, validation_fraction: float,
               overrides: dict, num_clients: int, extend: int,
               start: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> None:
    """Every preset x method cell of its start lrs (`start[preset][method]`, else `lrs`) on the
    validation split, then up to `extend` steps beyond the edge where the best lr lies there
    (resumable: finished cells are kept, and the same results make the same steps)."""
    rounds = load_config(overrides)["num-rounds"]
    common = {**overrides, "seed": seed, "data.validation-fraction": validation_fraction,
              "strategy.eval-every": rounds}
    todo = {(b, row): list((start or {}).get(b, {}).get(row.spec, lrs)) for b in presets for row in methods}
    for step in range(extend + 1):
        run_cells([(f"{b} {row.spec} lr {lr:g}", tune_dir(out, b, row.spec, lr),
                    {**common, "preset": b, **row.config, "train.lr": lr})
                   for (b, row), todo_lrs in todo.items() for lr in todo_lrs], num_clients)
        table = validation_accuracy(out, presets, methods)
        todo = {(b, row): [lr] for b in presets for row in methods
                if step < extend and (lr := beyond_edge(table.get(b, {}).get(row.spec, {}))) is not None}
        if not todo:
            return


def write_tuning(out: Path, presets, methods, command: str) -> dict[str, dict[str, float]]:
    """tuning.md and best-lr.json of the finished cells; returns the chosen lrs {preset: {method: lr}}."""
    table = validation_accuracy(out, presets, methods)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "tuning.md", markdown(table, command).encode())
    best = best_lrs(table)
    atomic_write_bytes(out / "best-lr.json", json.dumps(best, indent=2).encode())
    return best


def add_tuning_arguments(parser) -> None:
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.004, 0.008, 0.016],
                        help="the learning rates every preset and method starts from")
    parser.add_argument("--extend", type=int, default=2,
                        help="steps beyond the edge of the lrs tried, where the best lies there (default 2)")
    parser.add_argument("--validation-fraction", type=float, default=0.2)


def check_tuning_arguments(parser, args) -> None:
    bad_lr = [lr for lr in args.lrs if not lr > 0]
    if bad_lr:
        parser.error(f"--lrs must be > 0, got {bad_lr[0]}")
    if args.extend < 0:
        parser.error(f"--extend must be >= 0, got {args.extend}")
    if not 0 < args.validation_fraction < 1:
        parser.error(f"--validation-fraction must be in (0, 1), got {args.validation_fraction}")


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__)
    add_tuning_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    check_tuning_arguments(parser, args)
    out = args.out.resolve()
    command = "python -m feddat_flwr.tools.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.summary_only:
        run_tuning(out, args.presets, args.methods, args.lrs, args.seed, args.validation_fraction,
                   dict(args.config), args.clients, args.extend)
    write_tuning(out, args.presets, args.methods, command)
    print(f"summary: {out / 'tuning.md'}, {out / 'best-lr.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
