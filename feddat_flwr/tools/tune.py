"""Learning rate per preset and method, chosen on a validation split (never on the test set).

    python -m feddat_flwr.tools.tune --out outputs/tuning --presets function domain \\
        --methods feddat fedavg local-only --lrs 0.001 0.002 0.004 0.008 0.016 -c num-rounds=5
    python -m feddat_flwr.tools.compare --out outputs/comparison --lr-from outputs/tuning/best-lr.json ...

Every preset x method x lr cell is a normal run of the app with `data.validation-fraction`
(--validation-fraction, default 0.2) of each client's training examples held out and evaluated
in place of the test split, at seed --seed, into <out>/runs/<preset>/<method>/lr-<lr>/
(resumable like the comparison grid). Writes tuning.md (mean personalised validation accuracy
after the last round, per lr; best in bold) and best-lr.json ({preset: {method: lr}}).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from feddat_flwr.records import completed_results
from feddat_flwr.results import atomic_write_bytes
from feddat_flwr.tools.cli import unwind_on_sigterm
from feddat_flwr.tools.grid import grid_parser, run_cells


def tune_dir(out: Path, preset: str, method: str, lr: float) -> Path:
    return out / "runs" / preset / method / f"lr-{lr:g}"


def validation_accuracy(out: Path, presets, methods, lrs) -> dict[str, dict[str, dict[float, float]]]:
    """{preset: {method: {lr: mean personalised validation accuracy}}} of the finished cells."""
    table: dict[str, dict[str, dict[float, float]]] = {}
    for b in presets:
        for row in methods:
            for lr in lrs:
                if results := completed_results(tune_dir(out, b, row.spec, lr)):
                    accuracy = results.rounds[-1].eval[row.personalised]["mean"]
                    table.setdefault(b, {}).setdefault(row.spec, {})[lr] = accuracy
    return table


def best_lrs(table) -> dict[str, dict[str, float]]:
    """The highest-accuracy lr of each preset and method (ties: the smaller lr)."""
    return {b: {m: max(sorted(accs), key=accs.__getitem__) for m, accs in methods.items()}
            for b, methods in table.items()}


def markdown(table, lrs, command: str) -> str:
    lines = ["# Learning rates chosen on a validation split", "", f"Produced by: `{command}`", "",
             "Mean personalised accuracy on the held-out validation examples after the last round; "
             "**bold**: the lr chosen (best-lr.json).", ""]
    best = best_lrs(table)
    for b, methods in table.items():
        lines += [f"## {b}", "", "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
                  "|---|" + "---|" * len(lrs)]
        for m, accs in methods.items():
            cells = [("**{:.1f}**" if lr == best[b][m] else "{:.1f}").format(100 * accs[lr]) if lr in accs else "-"
                     for lr in lrs]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_tuning(out: Path, presets, methods, lrs, seed: int, validation_fraction: float,
               overrides: dict, num_clients: int) -> None:
    """Every preset x method x lr cell on the validation split (resumable)."""
    common = {**overrides, "seed": seed, "data.validation-fraction": validation_fraction}
    run_cells([(f"{b} {row.spec} lr {lr:g}", tune_dir(out, b, row.spec, lr),
                {**common, "preset": b, **row.config, "train.lr": lr})
               for b in presets for row in methods for lr in lrs], num_clients)


def write_tuning(out: Path, presets, methods, lrs, command: str) -> dict[str, dict[str, float]]:
    """tuning.md and best-lr.json of the finished cells; returns the chosen lrs {preset: {method: lr}}."""
    table = validation_accuracy(out, presets, methods, lrs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "tuning.md", markdown(table, lrs, command).encode())
    best = best_lrs(table)
    atomic_write_bytes(out / "best-lr.json", json.dumps(best, indent=2).encode())
    return best


def add_tuning_arguments(parser) -> None:
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.001, 0.002, 0.004, 0.008, 0.016])
    parser.add_argument("--validation-fraction", type=float, default=0.2)


def check_tuning_arguments(parser, args) -> None:
    bad_lr = [lr for lr in args.lrs if not lr > 0]
    if bad_lr:
        parser.error(f"--lrs must be > 0, got {bad_lr[0]}")
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
                   dict(args.config), args.clients)
    write_tuning(out, args.presets, args.methods, args.lrs, command)
    print(f"summary: {out / 'tuning.md'}, {out / 'best-lr.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
