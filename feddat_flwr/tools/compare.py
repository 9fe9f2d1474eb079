"""Methods x presets x seeds on one harness, and the paper-style comparison table.

    python -m feddat_flwr.tools.compare --out docs/results/comparison            # the default grid
    python -m feddat_flwr.tools.compare --methods feddat fedavg --presets function --seeds 0 1 \\
        --out /tmp/cmp -c num-rounds=4

Every cell is a normal run of the app (`feddat_flwr.tools.launch`, a private simulation SuperLink)
with run config `preset=<preset> method=<method> seed=<seed>` plus the common overrides, into
<out>/runs/<preset>/<method>/seed-<seed>/. Finished cells are not run again (resumable); an
unfinished cell's directory is moved aside, never deleted. Then the summary is written:
comparison.md / comparison.csv (rows methods, columns clients + average, mean ± std over seeds of
each method's personalised accuracy, best per column in bold; FedDAT against the best baseline;
FedDAT minus every other row paired by seed), convergence-<preset>.png and the communication and
wall time per method.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feddat_flwr.methods import PROPOSED, get_method
from feddat_flwr.records import completed_results
from feddat_flwr.results import atomic_write_bytes, pyplot, save_png
from feddat_flwr.tools.cli import unwind_on_sigterm
from feddat_flwr.tools.grid import grid_parser, parse_row, run_cells


def cell_dir(out: Path, preset: str, method: str, seed: int) -> Path:
    return out / "runs" / preset / method / f"seed-{seed}"


def run_grid(out: Path, presets, methods, seeds, overrides: dict[str, Any], num_clients: int,
             lrs: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Every preset x method x seed cell; `lrs[preset][method]`, where given, is the cell's
    train.lr (e.g. the tuned ones of `python -m feddat_flwr.tools.tune`)."""
    # Seed by seed: if the grid is stopped early, every preset and method has its first seeds.
    cells = []
    for s in seeds:
        for b in presets:
            for row in methods:
                lr = (lrs or {}).get(b, {}).get(row.spec)
                config = {**overrides, "preset": b, **row.config, "seed": s, **({"train.lr": lr} if lr else {})}
                cells.append((f"{b} {row.spec} seed {s}", cell_dir(out, b, row.spec, s), config))
    run_cells(cells, num_clients)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def finished_runs(out: Path, preset: str, method: str, seeds) -> dict[int, Any]:
    """Seed -> results of the preset x method cells that finished."""
    return {s: r for s in seeds if (r := completed_results(cell_dir(out, preset, method, s)))}


def collect(out: Path, presets, methods, seeds) -> list[dict]:
    """One row per preset x method x column (client id or 'avg') over the finished seeds."""
    rows = []
    for preset in presets:
        for row in methods:
            method = row.spec
            runs = list(finished_runs(out, preset, method, seeds).values())
            if not runs:
                continue
            variant = row.personalised
            split = "validation" if runs[0].config["data"]["validation-fraction"] > 0 else "test"
            last = [r.rounds[-1] for r in runs]
            clients = sorted(last[0].clients, key=int)
            columns = {c: [rec.clients[c].eval[variant] for rec in last] for c in clients}
            columns["avg"] = [_final_average(r, row) for r in runs]
            for column, values in columns.items():
                mean, std = _mean_std(values)
                rows.append({"preset": preset, "method": method, "variant": variant, "column": column,
                             "mean": mean, "std": std, "seeds": len(values), "split": split})
            bytes_total = [sum(rec.bytes_up + rec.bytes_down for rec in r.rounds) for r in runs]
            seconds = [sum(rec.seconds for rec in r.rounds) for r in runs]
            rows.append({"preset": preset, "method": method, "variant": variant, "column": "bytes",
                         "mean": statistics.fmean(bytes_total), "std": 0.0, "seeds": len(runs)})
            rows.append({"preset": preset, "method": method, "variant": variant, "column": "seconds",
                         "mean": statistics.fmean(seconds), "std": 0.0, "seeds": len(runs)})
            rows.append({"preset": preset, "method": method, "variant": variant, "column": "client-seconds",
                         "mean": statistics.fmean(_client_seconds(r) for r in runs), "std": 0.0, "seeds": len(runs)})
    return rows


EXTRA = ("bytes", "seconds", "client-seconds")  # the columns after the accuracies


def _client_seconds(results) -> float:
    """A client's training time over the run, averaged over the clients (each round's `train` seconds)."""
    totals: dict[str, float] = {}
    for record in results.rounds:
        for pid, client in record.clients.items():
            if client.train:
                totals[pid] = totals.get(pid, 0.0) + client.train["seconds"]
    return statistics.fmean(totals.values()) if totals else 0.0


def paired(out: Path, presets, methods, seeds) -> list[dict]:
    """FedDAT minus each other row, seed by seed (same partition and initialisation per seed), on
    the final average personalised accuracy, over the seeds where both cells finished."""
    proposed = next((row for row in methods if row.spec == PROPOSED), None)
    if proposed is None:
        return []
    pairs = []
    for preset in presets:
        ours = finished_runs(out, preset, PROPOSED, seeds)
        for row in methods:
            if row is proposed:
                continue
            theirs = finished_runs(out, preset, row.spec, seeds)
            diffs = [_final_average(ours[s], proposed) - _final_average(theirs[s], row)
                     for s in sorted(ours.keys() & theirs.keys())]
            if not diffs:
                continue
            mean, std = _mean_std(diffs)
            pairs.append({"preset": preset, "method": row.spec, "mean": mean, "std": std,
                          "ahead": sum(d > 0 for d in diffs), "seeds": len(diffs)})
    return pairs


def _final_average(results, row) -> float:
    return results.rounds[-1].eval[row.personalised]["mean"]


def markdown(rows: list[dict], command: str, pairs: list[dict] = ()) -> str:
    splits = " and ".join(sorted({r["split"] for r in rows if "split" in r})) or "test"
    lines = ["# FedDAT vs baselines on easy-VQA heterogeneity presets", "",
             f"Produced by: `{command}`", "",
             f"Personalised {splits} accuracy per client (each method's own personalised model: `dat` for "
             "FedDAT and no-KD, the aggregate + private head for FedAvg/FedProx/no-local, the local "
             "adapter for local-only), mean ± std over seeds; **bold**: best mean per column. "
             "Communication: bytes exchanged over the run (adapters, and FedPFT's aligned proxy layers); "
             "seconds: sum of round times; client s: a client's training time over the run (mean over "
             "clients).", ""]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        acc = [r for r in rows if r["preset"] == preset and r["column"] not in EXTRA]
        columns = list(dict.fromkeys(r["column"] for r in acc))
        best = {c: max(r["mean"] for r in acc if r["column"] == c) for c in columns}
        lines += [f"## {preset}", "",
                  "| method | " + " | ".join(f"client {c}" if c != "avg" else "average" for c in columns)
                  + " | MB exchanged | seconds | client s |",
                  "|---|" + "---|" * (len(columns) + 3)]
        for method in dict.fromkeys(r["method"] for r in acc):
            cells = []
            for c in columns:
                r = next(x for x in acc if x["method"] == method and x["column"] == c)
                text = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
                cells.append(f"**{text}**" if r["mean"] == best[c] else text)
            extra = {x["column"]: x["mean"] for x in rows
                     if x["preset"] == preset and x["method"] == method and x["column"] in EXTRA}
            seeds = next(x["seeds"] for x in acc if x["method"] == method)
            lines.append(f"| {method} (n={seeds}) | " + " | ".join(cells)
                         + f" | {extra['bytes'] / 1e6:.1f} | {extra['seconds']:.0f} | {extra['client-seconds']:.0f} |")
        lines += ["", verdict([r for r in acc if r["column"] == "avg"]), ""]
        lines += _paired_table([p for p in pairs if p["preset"] == preset])
    return "\n".join(lines)


def _paired_table(pairs: list[dict]) -> list[str]:
    if not pairs:
        return []
    return (["Paired by seed: FedDAT's average minus the row's, seed by seed (mean ± std of the "
             "differences), and in how many seeds FedDAT is ahead.", "",
             "| row | FedDAT minus row | FedDAT ahead |", "|---|---|---|"]
            + [f"| {p['method']} | {100 * p['mean']:+.1f} ± {100 * p['std']:.1f} | {p['ahead']} of {p['seeds']} |"
               for p in pairs] + [""])


def verdict(averages: list[dict]) -> str:
    """FedDAT's average against the best baseline's: the difference, and whether it exceeds one
    std over seeds (mean_F - mean_B > max(std_F, std_B))."""
    feddat = next((r for r in averages if r["method"] == PROPOSED), None)
    baselines = [r for r in averages if get_method(parse_row(r["method"]).method).baseline]
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


def plot_convergence(out: Path, presets, methods, seeds, dest: Path) -> None:
    plt = pyplot()
    for preset in presets:
        fig, ax = plt.subplots(figsize=(8, 4))
        for row in methods:
            runs = list(finished_runs(out, preset, row.spec, seeds).values())
            if not runs:
                continue
            variant = row.personalised
            evaluated = [[rec for rec in r.rounds if rec.eval is not None] for r in runs]
            xs = [rec.round for rec in evaluated[0]]
            ys = [statistics.fmean(e[i].eval[variant]["mean"] for e in evaluated) for i in range(len(xs))]
            ax.plot(xs, ys, marker="o", label=row.spec)
        if not ax.lines:
            plt.close(fig)
            continue
        ax.set(title=f"{preset}: mean personalised accuracy (mean over seeds)", xlabel="round", ylabel="accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        save_png(fig, dest / f"convergence-{preset}.png")


def write_summary(out: Path, presets, methods, seeds, command: str) -> list[dict]:
    rows = collect(out, presets, methods, seeds)
    out.mkdir(parents=True, exist_ok=True)
    pairs = paired(out, presets, methods, seeds)
    atomic_write_bytes(out / "comparison.md", markdown(rows, command, pairs).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["preset", "method", "variant", "column", "mean", "std", "seeds", "split"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "comparison.csv", text.getvalue().encode())
    plot_convergence(out, presets, methods, seeds, out)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lr-from", type=Path, metavar="BEST_LR_JSON",
                        help="per preset and method learning rates (best-lr.json of feddat_flwr.tools.tune)")
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    out = args.out.resolve()
    if not args.summary_only:
        lrs = json.loads(args.lr_from.read_text()) if args.lr_from else None
        run_grid(out, args.presets, args.methods, args.seeds, dict(args.config), args.clients, lrs)
    command = "python -m feddat_flwr.tools.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    write_summary(out, args.presets, args.methods, args.seeds, command)
    print(f"summary: {out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
