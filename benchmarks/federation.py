"""Federation overhead: the simulation's round time vs the same clients' compute without Flower.

    python benchmarks/federation.py --rounds 4 --out docs/results/federation.md [-c key=value ...]

1. In one process, no Flower: every client's train + evaluate of each round, the same code and
   configuration as the app, plus the FedAvg of the shared adapters.
2. The app as a Flower simulation (private SuperLink, Ray), one client actor at a time with all
   cores (client-resources-num-cpus = cores), so both sides use the same compute.
Round 1 of the simulation carries the fixed start-up (actor start, model load, data encoding), so
the overhead is reported per round for rounds >= 2, and round 1 separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from feddat_flwr.client import client_for, evaluate_client, train_client
from feddat_flwr.config import load_config
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.records import WEIGHT_KEYS, Results
from feddat_flwr.tools.cli import add_overrides
from feddat_flwr.tools.launch import run_simulation
from feddat_flwr.training.schedule import round_lr
from common import report


def in_process_rounds(cfg, num_clients: int) -> tuple[list[float], list[float]]:
    """Seconds of each round's client compute + aggregation, and of its training alone, without Flower.
    The aggregate is FedAvg's weighted mean under the configured strategy.weighting."""
    torch.set_num_threads(os.cpu_count() or 1)
    backbone = load_backbone_for(cfg)
    clients = [client_for(cfg, {"partition-id": i, "num-partitions": num_clients})[1] for i in range(num_clients)]
    states = [None] * num_clients
    communicates = get_method(cfg["method"]).communicates
    global_adapter = backbone.initial_adapter(cfg["seed"]) if communicates else {}
    weight_key = WEIGHT_KEYS[cfg.strategy["weighting"]]
    seconds, train_seconds = [], []
    for r in range(1, cfg["num-rounds"] + 1):
        start = time.perf_counter()
        updates, train = [], 0.0
        for i, data in enumerate(clients):
            shared, reply, states[i] = train_client(backbone, data, states[i], global_adapter, cfg,
                                                      lr=round_lr(cfg, r), server_round=r)
            updates.append((shared, float(reply.to_metrics()[weight_key])))
            train += reply.seconds
        total = sum(w for _, w in updates)
        global_adapter = {k: sum(u[k] * (w / total) for u, w in updates) for k in global_adapter}
        for i, data in enumerate(clients):
            evaluate_client(backbone, data, states[i], global_adapter, cfg)
        seconds.append(time.perf_counter() - start)
        train_seconds.append(train)
    return seconds, train_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    add_overrides(parser)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    overrides = {**dict(args.config), "num-rounds": args.rounds}
    cfg = load_config(overrides)
    plain, plain_train = in_process_rounds(cfg, args.clients)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        started = time.monotonic()
        run_simulation({**overrides, "output-dir": str(run_dir)}, num_clients=args.clients,
                       cpus_per_client=os.cpu_count() or 1, work_dir=Path(tmp) / "flwr", stream=False)
        total = time.monotonic() - started
        results = Results.load(run_dir)
    flower = [r.seconds for r in results.rounds]
    flower_train = [sum(c.train["seconds"] for c in r.clients.values()) for r in results.rounds]
    later = [(f - p) / p for f, p in zip(flower[1:], plain[1:])]
    lines = [f"## Federation overhead ({args.clients} clients, {args.rounds} rounds, one client at a time, "
             f"{os.cpu_count()} cores)", "", "Command: `python benchmarks/federation.py "
             + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
             "Round time, and in brackets the clients' summed training time within it (so a slower "
             "compute inside the client actors can be told apart from messaging and orchestration).", "",
             "| round | without Flower (s) | Flower simulation (s) | overhead |", "|---|---|---|---|"]
    for r, (p, f, pt, ft) in enumerate(zip(plain, flower, plain_train, flower_train), 1):
        lines.append(f"| {r} | {p:.2f} ({pt:.2f}) | {f:.2f} ({ft:.2f}) | {100 * (f - p) / p:+.1f} %"
                     f"{' (incl. start-up)' if r == 1 else ''} |")
    lines += ["", f"Mean overhead, rounds >= 2: {100 * statistics.fmean(later):+.1f} % (target < 15 %). "
              f"Whole simulation incl. SuperLink/Ray start and model load: {total:.0f} s."]
    return report(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
