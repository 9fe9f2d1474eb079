"""Where federation helps: personalised accuracy against the size of every client's training set.

    python -m feddat_flwr.tools.curve --out outputs/curve --presets function domain \\
        --methods feddat fedavg local-only fedpft-proxy --sizes 50 150 500 1500 --seeds 0 1 2 \\
        --validation-fraction 0.3333

For every size n, smallest first, every cell a normal run of the app (resumable like the
comparison grid, finished cells are skipped): each preset x method's learning rate is chosen on a
validation split (`tools.tune` at --tune-seed, into <out>/size-<n>/tuning/), with the cap on a
client's examples raised so that holding out --validation-fraction of them still leaves n to
train on (n=50 at 1/3: 75 examples, 25 of them validation); the search starts from --lrs at the
smallest size and from half, once and twice the lr chosen at the size before at every other, and
steps beyond an edge (--extend). Then every preset x method x seed runs with data.max-train=n and
its chosen lr, evaluated on the test split (`tools.compare`'s cells and comparison.md, into
<out>/size-<n>/). Then curve.md / curve.csv (per preset, method and size: mean ± std over seeds
of the clients' average personalised accuracy after the last round, the chosen lr, the clients'
mean number of training examples; curve.md also gives FedDAT minus every other method, paired by
seed) and curve.png (a panel per preset: accuracy vs size, log x, ±1 std bars). A size is a
cap: a client with fewer examples trains on all of its own.
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
from pathlib import Path

from feddat_flwr.data.partition import validation_size
from feddat_flwr.results import atomic_write_bytes, pyplot, save_png
from feddat_flwr.tools import compare, tune
from feddat_flwr.tools.cli import unwind_on_sigterm
from feddat_flwr.tools.grid import grid_parser

FIELDS = ["preset", "method", "size", "mean", "std", "seeds", "lr", "train-examples"]


def size_dir(out: Path, size: int) -> Path:
    return out / f"size-{size}"


def tuning_cap(n: int, validation_fraction: float) -> int:
    """The smallest cap on a client's training examples that leaves n to train on once
    `validation_fraction` of them are held out for validation."""
    cap = n + 1
    while cap - validation_size(cap, validation_fraction) < n:
        cap += 1
    return cap


def run_curve(out: Path, presets, methods, sizes, seeds, lrs, tune_seed: int, validation_fraction: float,
              extend: int, overrides: dict, num_clients: int, command: str) -> None:
    """Tune, then run, size by size (smallest first: the cheap end of the curve is there first)."""
    chosen: dict[str, dict[str, float]] = {}
    for n in sorted(sizes):
        tuning = size_dir(out, n) / "tuning"
        start = {b: {m: [lr / 2, lr, lr * 2] for m, lr in by_method.items()} for b, by_method in chosen.items()}
        tune.run_tuning(tuning, presets, methods, lrs, tune_seed, validation_fraction,
                        {**overrides, "data.max-train": tuning_cap(n, validation_fraction)}, num_clients, extend, start)
        chosen = tune.write_tuning(tuning, presets, methods, command)
        compare.run_grid(size_dir(out, n), presets, methods, seeds, {**overrides, "data.max-train": n}, num_clients,
                         chosen)
        compare.write_summary(size_dir(out, n), presets, methods, seeds, command)


def collect(out: Path, presets, methods, sizes, seeds) -> list[dict]:
    """One row per preset x method x size with finished test runs."""
    rows = []
    for n in sorted(sizes):
        chosen = tune.best_lrs(tune.validation_accuracy(size_dir(out, n) / "tuning", presets, methods))
        averages = [r for r in compare.collect(size_dir(out, n), presets, methods, seeds) if r["column"] == "avg"]
        for r in averages:
            runs = compare.finished_runs(size_dir(out, n), r["preset"], r["method"], seeds).values()
            examples = [c.num_examples for x in runs for c in x.rounds[0].clients.values() if c.num_examples]
            rows.append({"preset": r["preset"], "method": r["method"], "size": n, "mean": r["mean"], "std": r["std"],
                         "seeds": r["seeds"], "lr": chosen.get(r["preset"], {}).get(r["method"]),
                         "train-examples": statistics.fmean(examples) if examples else None})
    return rows


def collect_paired(out: Path, presets, methods, sizes, seeds) -> list[dict]:
    """FedDAT minus every other method, paired by seed, at each size (`tools.compare.paired`)."""
    return [{**p, "size": n} for n in sorted(sizes) for p in compare.paired(size_dir(out, n), presets, methods, seeds)]


def markdown(rows: list[dict], command: str, pairs: list[dict] = ()) -> str:
    lines = ["# Personalised accuracy vs the clients' data size", "", f"Produced by: `{command}`", "",
             "Each cell: mean ± std over seeds (n) of the clients' average personalised test accuracy "
             "after the last round, at the lr chosen for that preset, method and size on a validation "
             "split (in brackets, with the number of seeds); `size`: the cap on every client's training examples (the clients' "
             "mean actual number under the table); **bold**: best per size.", ""]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        sizes = sorted({r["size"] for r in mine})
        best = {n: max(r["mean"] for r in mine if r["size"] == n) for n in sizes}
        lines += [f"## {preset}", "", "| method | " + " | ".join(f"size {n}" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for method in dict.fromkeys(r["method"] for r in mine):
            cells = []
            for n in sizes:
                r = next((x for x in mine if x["method"] == method and x["size"] == n), None)
                if r is None:
                    cells.append("-")
                    continue
                lr = "-" if r["lr"] is None else f"{r['lr']:g}"
                text = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} (n={r['seeds']}, lr {lr})"
                cells.append(f"**{text}**" if r["mean"] == best[n] else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        actual = {n: [r["train-examples"] for r in mine if r["size"] == n and r["train-examples"]] for n in sizes}
        lines += ["", "Mean training examples per client: "
                  + ", ".join(f"size {n}: {statistics.fmean(v):.0f}" for n, v in actual.items() if v), ""]
        lines += _paired_table([p for p in pairs if p["preset"] == preset], sizes)
    return "\n".join(lines)


def _paired_table(pairs: list[dict], sizes: list[int]) -> list[str]:
    if not pairs:
        return []
    lines = ["FedDAT minus each method, paired by seed (mean ± std of the per-seed differences in points; "
             "FedDAT ahead in k of n seeds):", "",
             "| FedDAT minus | " + " | ".join(f"size {n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for method in dict.fromkeys(p["method"] for p in pairs):
        cells = []
        for n in sizes:
            p = next((x for x in pairs if x["method"] == method and x["size"] == n), None)
            cells.append("-" if p is None else
                         f"{100 * p['mean']:+.1f} ± {100 * p['std']:.1f} ({p['ahead']}/{p['seeds']})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot(rows: list[dict], path: Path) -> None:
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    if not presets:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(presets), figsize=(5 * len(presets), 4), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        mine = [r for r in rows if r["preset"] == preset]
        for method in dict.fromkeys(r["method"] for r in mine):
            points = sorted((r["size"], r["mean"], r["std"]) for r in mine if r["method"] == method)
            xs, ys, errs = zip(*points)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method)
        sizes = sorted({r["size"] for r in mine})
        ax.set(title=f"{preset}", xlabel="training examples per client (cap)", ylabel="personalised accuracy",
               xscale="log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    save_png(fig, path)


def write_summary(out: Path, presets, methods, sizes, seeds, command: str) -> list[dict]:
    rows = collect(out, presets, methods, sizes, seeds)
    out.mkdir(parents=True, exist_ok=True)
    pairs = collect_paired(out, presets, methods, sizes, seeds)
    atomic_write_bytes(out / "curve.md", markdown(rows, command, pairs).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "curve.csv", text.getvalue().encode())
    plot(rows, out / "curve.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", type=int, default=[50, 150, 500, 1500])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tune-seed", type=int, default=0)
    tune.add_tuning_arguments(parser)
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    tune.check_tuning_arguments(parser, args)
    bad_size = [n for n in args.sizes if n < 1]
    if bad_size:
        parser.error(f"--sizes must be >= 1, got {bad_size[0]}")
    out = args.out.resolve()
    command = "python -m feddat_flwr.tools.curve " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.summary_only:
        run_curve(out, args.presets, args.methods, args.sizes, args.seeds, args.lrs, args.tune_seed,
                  args.validation_fraction, args.extend, dict(args.config), args.clients, command)
    write_summary(out, args.presets, args.methods, args.sizes, args.seeds, command)
    print(f"summary: {out / 'curve.md'}, {out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
