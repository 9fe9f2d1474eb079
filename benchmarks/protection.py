"""What protecting the shared adapter costs and buys: accuracy vs epsilon under central DP, and
accuracy with a hostile client under each aggregation.

    python benchmarks/protection.py privacy --out outputs/bench-privacy --seeds 0 1 \\
        --report docs/results/privacy.md -c data.max-train=300
    python benchmarks/protection.py robustness --out outputs/bench-robustness --seeds 0 1 \\
        --report docs/results/robustness.md -c data.max-train=300

Every cell is a normal FedDAT run of the app (a private simulation SuperLink) with uniform
weighting (what DP accounting needs; the other cells use it too, so that they compare), into
<out>/<cell>/seed-<seed>/; finished cells are not run again (resumable).

- privacy: privacy.mode=none, and central-fixed for each --noise multiplier at --clipping-norm.
  Reported: the final epsilon (delta 1e-5), personalised (`dat`) and global (`shared`) accuracy,
  mean ± std over seeds; plot <report>.png, accuracy vs epsilon.
- robustness: 1 of the clients (the last partition) sends a random update --scale times the norm
  of its honest one, under fedavg, median and trimmed-mean; plus the honest federation, and fedavg
  with a tight strategy.max-update-norm. Reported: the honest clients' accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from feddat_flwr.records import Results, completed_results
from feddat_flwr.results import pyplot
from feddat_flwr.tools.cli import add_overrides, unwind_on_sigterm
from feddat_flwr.tools.grid import run_cells
from common import report


def privacy_cells(args) -> dict[str, dict]:
    cells = {"none": {"privacy.mode": "none"}}
    for z in args.noise:
        cells[f"z={z:g}"] = {"privacy.mode": "central-fixed", "privacy.noise-multiplier": z,
                             "privacy.clipping-norm": args.clipping_norm}
    return cells


def robustness_cells(args) -> dict[str, dict]:
    attack = {"attack.kind": "scaled-random", "attack.partitions": str(args.clients - 1), "attack.scale": args.scale}
    return {
        "honest fedavg": {},
        "attacked fedavg": {**attack, "strategy.aggregation": "fedavg"},
        "attacked median": {**attack, "strategy.aggregation": "median"},
        "attacked trimmed-mean": {**attack, "strategy.aggregation": "trimmed-mean"},
        f"attacked fedavg, max-update-norm {args.tight_norm:g}": {**attack, "strategy.max-update-norm": args.tight_norm},
    }


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "=.-" else "-" for ch in label)


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def _honest_mean(results: Results, variant: str, hostile: set[str]) -> float:
    """The test-size weighted mean accuracy of `variant` over the clients not in `hostile`."""
    clients = [c for pid, c in results.rounds[-1].clients.items() if pid not in hostile and c.eval]
    total = sum(c.eval["num-examples"] for c in clients)
    return sum(c.eval[variant] * c.eval["num-examples"] for c in clients) / total


def summarize(study: str, cells: dict[str, dict], runs: dict[str, list[Results]], args, command: str) -> list[str]:
    hostile = {str(args.clients - 1)} if study == "robustness" else set()
    lines = [f"# {'Accuracy vs epsilon (central DP)' if study == 'privacy' else 'A hostile client vs aggregation'}",
             "", f"Produced by: `{command}`", ""]
    if study == "privacy":
        lines += ["| setting | epsilon (delta 1e-5) | clipped share (mean over rounds) | dat | shared | local |",
                  "|---|---|---|---|---|---|"]
    else:
        lines += [f"Client {args.clients - 1} of {args.clients} sends a random update {args.scale:g} x the norm of its "
                  "honest one every round; accuracies are the other clients' (test-size weighted mean).", "",
                  "| setting | dropped hostile replies | dat | shared | local |", "|---|---|---|---|---|"]
    for label in cells:
        done = runs[label]
        if not done:
            lines.append(f"| {label} | not run |")
            continue
        acc = {v: _mean_std([_honest_mean(r, v, hostile) for r in done]) for v in ("dat", "shared", "local")}
        n = f" (n={len(done)})"
        if study == "privacy":
            eps = [r.rounds[-1].privacy.epsilon for r in done if r.rounds[-1].privacy]
            shares = [s for r in done for rec in r.rounds if rec.privacy and (s := rec.privacy.clipped_share) is not None]
            eps_text = f"{statistics.fmean(eps):.1f}" if eps else "∞ (no DP)"
            share_text = f"{statistics.fmean(shares):.2f}" if shares else "-"
            lines.append(f"| {label}{n} | {eps_text} | {share_text} | {acc['dat']} | {acc['shared']} | {acc['local']} |")
        else:
            dropped = statistics.fmean(sum(len(rec.failures) for rec in r.rounds) for r in done)
            lines.append(f"| {label}{n} | {dropped:.1f} of {len(done[0].rounds)} | {acc['dat']} | {acc['shared']} "
                         f"| {acc['local']} |")
    return lines


def plot_privacy(runs: dict[str, list[Results]], dest: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    private = {label: r for label, r in runs.items() if label != "none" and r}
    for variant, marker in (("dat", "o"), ("shared", "s")):
        points = sorted((statistics.fmean(x.rounds[-1].privacy.epsilon for x in r),
                         statistics.fmean(_honest_mean(x, variant, set()) for x in r)) for r in private.values())
        if points:
            ax.plot(*zip(*points), marker=marker, label=f"{variant} (central DP)")
        if runs.get("none"):
            ax.axhline(statistics.fmean(_honest_mean(x, variant, set()) for x in runs["none"]),
                       linestyle="--", color=ax.lines[-1].get_color() if points else None, label=f"{variant}, no DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon after the last round (delta 1e-5)")
    ax.set_ylabel("mean client test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["privacy", "robustness"])
    parser.add_argument("--out", type=Path, required=True, help="directory of the runs")
    parser.add_argument("--report", type=Path, help="write the table here (and the plot next to it)")
    parser.add_argument("--preset", default="domain")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--clipping-norm", type=float, default=0.5)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--tight-norm", type=float, default=3.0)
    parser.add_argument("--only", nargs="+", metavar="SETTING", help="run and report only these settings (labels)")
    parser.add_argument("--summary-only", action="store_true")
    add_overrides(parser, "run-config override for every cell, repeatable")
    args = parser.parse_args()
    args.out = args.out.resolve()  # output-dir must be absolute
    unwind_on_sigterm()
    cells = (privacy_cells if args.study == "privacy" else robustness_cells)(args)
    if args.only:
        cells = {label: config for label, config in cells.items() if label in args.only}
    common = {**dict(args.config), "preset": args.preset, "method": "feddat", "strategy.weighting": "uniform"}
    grid = [(f"{label} seed {s}", args.out / _slug(label) / f"seed-{s}", {**common, **config, "seed": s})
            for s in args.seeds for label, config in cells.items()]
    if not args.summary_only:
        run_cells(grid, args.clients)
    runs = {label: [r for s in args.seeds if (r := completed_results(args.out / _slug(label) / f"seed-{s}"))]
            for label in cells}
    command = "python benchmarks/protection.py " + " ".join(sys.argv[1:])
    lines = summarize(args.study, cells, runs, args, command)
    if args.study == "privacy" and args.report:
        plot_privacy(runs, args.report.with_suffix(".png"))
        lines += ["", f"![accuracy vs epsilon]({args.report.with_suffix('.png').name})"]
    return report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
