"""Methods x benchmarks x seeds on one harness, and the paper-style comparison table.

    python -m feddat_flwr.compare --out docs/results/comparison            # the default grid
    python -m feddat_flwr.compare --methods feddat fedavg --benchmarks function --seeds 0 1 \\
        --out /tmp/cmp -c num-rounds=4

Every cell is a normal run of the app (`feddat_flwr.launch`, a private simulation SuperLink)
with run config `preset=<benchmark> method=<method> seed=<seed>` plus the common overrides, into
<out>/runs/<benchmark>/<method>/seed-<seed>/. Finished cells are not run again (resumable); an
unfinished cell's directory is moved aside, never deleted. Then the summary is written:
comparison.md / comparison.csv (rows methods, columns clients + average, mean ± std over seeds of
each method's personalised accuracy, best per column in bold), convergence-<benchmark>.png and the
communication and wall time per method.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feddat_flwr.config import METHODS, available_presets
from feddat_flwr.launch import RunFailed, completed_results, parse_override, run_simulation, unwind_on_sigterm
from feddat_flwr.results import atomic_write_bytes
from feddat_flwr.train import PERSONALISED_VARIANT

BENCHMARKS = ("function", "domain", "label-skew", "task")
BASELINES = ("fedavg", "fedprox", "local-only")  # what the target compares FedDAT against (not the ablations)


def cell_dir(out: Path, benchmark: str, method: str, seed: int) -> Path:
    return out / "runs" / benchmark / method / f"seed-{seed}"


def run_grid(out: Path, benchmarks, methods, seeds, overrides: dict[str, Any], num_clients: int,
             lrs: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Every benchmark x method x seed cell; `lrs[benchmark][method]`, where given, is the cell's
    train.lr (e.g. the tuned ones of `python -m feddat_flwr.tune`)."""
    # Seed by seed: if the grid is stopped early, every benchmark and method has its first seeds.
    cells = []
    for s in seeds:
        for b in benchmarks:
            for m in methods:
                lr = (lrs or {}).get(b, {}).get(m)
                config = {**overrides, "preset": b, "method": m, "seed": s, **({"train.lr": lr} if lr else {})}
                cells.append((f"{b} {m} seed {s}", cell_dir(out, b, m, s), config))
    run_cells(cells, num_clients)


def run_cells(cells: list[tuple[str, Path, dict[str, Any]]], num_clients: int) -> None:
    """Run each (label, run directory, run config) cell as a normal run of the app. Finished cells
    are not run again; an unfinished cell's directory is moved aside, never deleted."""
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
                           work_dir=run_dir.with_name(f".{run_dir.name}.flwr"), stream=False)
        except RunFailed as exc:
            print(f"    FAILED: {exc}", file=sys.stderr)
            continue
        print(f"    {time.monotonic() - started:.0f} s", flush=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def collect(out: Path, benchmarks, methods, seeds) -> list[dict]:
    """One row per benchmark x method x column (client id or 'avg') over the finished seeds."""
    rows = []
    for benchmark in benchmarks:
        for method in methods:
            runs = [r for s in seeds if (r := completed_results(cell_dir(out, benchmark, method, s)))]
            if not runs:
                continue
            variant = PERSONALISED_VARIANT[method]
            last = [r["rounds"][-1] for r in runs]
            clients = sorted(last[0]["clients"], key=int)
            columns = {c: [rec["clients"][c]["eval"][variant] for rec in last] for c in clients}
            columns["avg"] = [rec["eval"][variant]["mean"] for rec in last]
            for column, values in columns.items():
                mean, std = _mean_std(values)
                rows.append({"benchmark": benchmark, "method": method, "variant": variant, "column": column,
                             "mean": mean, "std": std, "seeds": len(values)})
            bytes_total = [sum(r2["bytes-up"] + r2["bytes-down"] for r2 in r["rounds"]) for r in runs]
            seconds = [sum(r2["seconds"] for r2 in r["rounds"]) for r in runs]
            rows.append({"benchmark": benchmark, "method": method, "variant": variant, "column": "bytes",
                         "mean": statistics.fmean(bytes_total), "std": 0.0, "seeds": len(runs)})
            rows.append({"benchmark": benchmark, "method": method, "variant": variant, "column": "seconds",
                         "mean": statistics.fmean(seconds), "std": 0.0, "seeds": len(runs)})
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# FedDAT vs baselines on easy-VQA heterogeneity benchmarks", "",
             f"Produced by: `{command}`", "",
             "Personalised test accuracy per client (each method's own personalised model: `dat` for "
             "FedDAT and no-KD, the aggregate + private head for FedAvg/FedProx/no-local, the local "
             "adapter for local-only), mean ± std over seeds; **bold**: best mean per column. "
             "Communication: bytes of adapters exchanged over the run; time: sum of round times.", ""]
    for benchmark in dict.fromkeys(r["benchmark"] for r in rows):
        acc = [r for r in rows if r["benchmark"] == benchmark and r["column"] not in ("bytes", "seconds")]
        columns = list(dict.fromkeys(r["column"] for r in acc))
        best = {c: max(r["mean"] for r in acc if r["column"] == c) for c in columns}
        lines += [f"## {benchmark}", "",
                  "| method | " + " | ".join(f"client {c}" if c != "avg" else "average" for c in columns)
                  + " | MB exchanged | seconds |",
                  "|---|" + "---|" * (len(columns) + 2)]
        for method in dict.fromkeys(r["method"] for r in acc):
            cells = []
            for c in columns:
                r = next(x for x in acc if x["method"] == method and x["column"] == c)
                text = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
                cells.append(f"**{text}**" if r["mean"] == best[c] else text)
            extra = {x["column"]: x["mean"] for x in rows
                     if x["benchmark"] == benchmark and x["method"] == method and x["column"] in ("bytes", "seconds")}
            seeds = next(x["seeds"] for x in acc if x["method"] == method)
            lines.append(f"| {method} (n={seeds}) | " + " | ".join(cells)
                         + f" | {extra['bytes'] / 1e6:.1f} | {extra['seconds']:.0f} |")
        lines += ["", verdict([r for r in acc if r["column"] == "avg"]), ""]
    return "\n".join(lines)


def verdict(averages: list[dict]) -> str:
    """FedDAT's average against the best baseline's: the difference, and whether it exceeds one
    std over seeds (mean_F - mean_B > max(std_F, std_B))."""
    feddat = next((r for r in averages if r["method"] == "feddat"), None)
    baselines = [r for r in averages if r["method"] in BASELINES]
    if feddat is None or not baselines:
        return "FedDAT vs baselines: not both in this table."
    best = max(baselines, key=lambda r: r["mean"])
    diff = feddat["mean"] - best["mean"]
    beyond = diff > max(feddat["std"], best["std"]) and min(feddat["seeds"], best["seeds"]) > 1
    if diff <= 0:
        outcome = "not better than it."
    else:
        outcome = f"better than it, {'' if beyond else 'not '}beyond one std over seeds."
    return (f"FedDAT average {100 * feddat['mean']:.1f} vs best baseline ({best['method']}) "
            f"{100 * best['mean']:.1f}: {100 * diff:+.1f} points, {outcome}")


def plot_convergence(out: Path, benchmarks, methods, seeds, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for benchmark in benchmarks:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in methods:
            runs = [r for s in seeds if (r := completed_results(cell_dir(out, benchmark, method, s)))]
            if not runs:
                continue
            variant = PERSONALISED_VARIANT[method]
            evaluated = [[rec for rec in r["rounds"] if "eval" in rec] for r in runs]
            xs = [rec["round"] for rec in evaluated[0]]
            ys = [statistics.fmean(e[i]["eval"][variant]["mean"] for e in evaluated) for i in range(len(xs))]
            ax.plot(xs, ys, marker="o", label=method)
        if not ax.lines:
            plt.close(fig)
            continue
        ax.set(title=f"{benchmark}: mean personalised accuracy", xlabel="round", ylabel="accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(dest / f"convergence-{benchmark}.png", buffer.getvalue())


def write_summary(out: Path, benchmarks, methods, seeds, command: str) -> list[dict]:
    rows = collect(out, benchmarks, methods, seeds)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "comparison.md", markdown(rows, command).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["benchmark", "method", "variant", "column", "mean", "std", "seeds"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "comparison.csv", text.getvalue().encode())
    plot_convergence(out, benchmarks, methods, seeds, out)
    return rows


def grid_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a grid of runs (the comparison here, the lr tuning in feddat_flwr.tune)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory of the runs and the summary")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=available_presets(),
                        metavar="BENCHMARK", help=f"presets in conf/presets/ (default: {' '.join(BENCHMARKS)})")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                        help=f"allowed: {', '.join(METHODS)} (default: all)")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("-c", "--config", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="run-config override for every cell, repeatable")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from finished runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lr-from", type=Path, metavar="BEST_LR_JSON",
                        help="per benchmark and method learning rates (best-lr.json of feddat_flwr.tune)")
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    out = args.out.resolve()
    if not args.summary_only:
        lrs = json.loads(args.lr_from.read_text()) if args.lr_from else None
        run_grid(out, args.benchmarks, args.methods, args.seeds, dict(args.config), args.clients, lrs)
    command = "python -m feddat_flwr.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    write_summary(out, args.benchmarks, args.methods, args.seeds, command)
    print(f"summary: {out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
