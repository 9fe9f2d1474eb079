"""Per-message overhead of a real deployment: Flower's stock ClientApp path vs feddat-flwr's lean one.

    python benchmarks/deployment.py --rounds 3 --out docs/results/deployment.md [-c key=value ...]

For each variant, a loopback deployment as in production (deploy/*.sh: TLS, SuperNode
authentication) with one SuperNode runs the same federation; its log (FLWR_LOG_LEVEL=DEBUG puts
timestamps on Flower's lines, and the ClientApp marks where its compute starts and ends) gives,
for every message the node handles:

  pull       Receiving -> Received (the SuperNode pulls the message from the SuperLink)
  start      Received -> compute starts (executor start, imports, FAB, task input, model + data)
  reply      compute ends -> Sent (the reply back to the SuperNode and on to the SuperLink)
  overhead   pull + start + reply: all of the message's time that is not the ClientApp's compute
  wait       the previous message's Sent -> this one's Receiving (the server's aggregation and the
             SuperNode's idle poll)

Variants: stock (FEDDAT_EXECUTOR=stock, FEDDAT_NODE_POLL=0: Flower as shipped) and lean (the
defaults of deploy/start-supernode.sh). Both must produce the same final shared adapter and
accuracies (same seed); the report says whether they do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.local_deployment import LocalDeployment  # noqa: E402
from feddat_flwr.tools.cli import add_overrides  # noqa: E402
from common import report  # noqa: E402

VARIANTS = {"stock": {"FEDDAT_EXECUTOR": "stock", "FEDDAT_NODE_POLL": "0"}, "lean": {}}
EVENTS = {  # a node-log line -> the event it marks
    "receiving": re.compile(r"Receiving: (\w+) message"),
    "received": re.compile(r"Received successfully"),
    "compute-starts": re.compile(r"\[feddat\] \w+ compute starts"),
    "compute-ends": re.compile(r"\[feddat\] \w+ compute ends"),
    "sent": re.compile(r"Sent successfully"),
}
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
PHASES = ("pull", "start", "compute", "reply", "overhead", "wait")


def node_events(log_text: str) -> list[tuple[str, float, str]]:
    """(event, time, message type) for every marked line of a node's log, in order."""
    events = []
    kind = ""
    for line in log_text.splitlines():
        stamp = STAMP.search(line)
        for event, pattern in EVENTS.items():
            if stamp and (m := pattern.search(line)):
                kind = m.group(1) if event == "receiving" else kind
                events.append((event, datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), kind))
    return events


def message_phases(events: list[tuple[str, float, str]]) -> list[dict]:
    """One row of phase seconds per message (see the module docstring)."""
    rows, current, last_sent = [], None, None
    for event, t, kind in events:
        if event == "receiving":
            current = {"type": kind, "receiving": t}
        elif current is not None:
            current.setdefault(event, t)
            if event == "sent":
                c = current
                row = {"type": c["type"], "pull": c["received"] - c["receiving"],
                       "start": c["compute-starts"] - c["received"],
                       "compute": c["compute-ends"] - c["compute-starts"],
                       "reply": c["sent"] - c["compute-ends"],
                       "wait": None if last_sent is None else c["receiving"] - last_sent}
                row["overhead"] = row["pull"] + row["start"] + row["reply"]
                rows.append(row)
                last_sent, current = t, None
    return rows


def _outcome(run_dir: Path) -> dict:
    """A run's final shared adapter and accuracies (which must be equal between variants) and its
    round times."""
    results = json.loads((run_dir / "results.json").read_text())
    adapter = next((run_dir / "shared-adapter").glob("*.safetensors"))
    return {"adapter-sha256": hashlib.sha256(adapter.read_bytes()).hexdigest(),
            "eval": [r.get("eval") for r in results["rounds"]],
            "round-seconds": [r.get("seconds") for r in results["rounds"]]}


def run_variant(name: str, work: Path, run_config: dict) -> tuple[list[dict], dict]:
    env = {**VARIANTS[name], "FLWR_LOG_LEVEL": "DEBUG"}
    with LocalDeployment(work / name, 1, node_env=env) as dep:
        out = work / name / "run"
        _, status = dep.run({**run_config, "output-dir": str(out)}, timeout=3600)
        if status != "finished:completed":
            raise SystemExit(f"{name}: the run ended as {status}; logs in {work / name}")
        rows = message_phases(node_events(dep.log_path("node-0").read_text()))
    return rows, _outcome(out)


def _median(rows: list[dict], phase: str) -> float:
    values = [r[phase] for r in rows if r[phase] is not None]
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the deployments' logs here")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    add_overrides(parser)
    args = parser.parse_args(argv)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="feddat-deploy-bench-"))).resolve()
    run_config = {"num-rounds": args.rounds, "data.max-train": 128, "data.max-test": 64,
                  "strategy.eval-every": 1, "strategy.min-train-clients": 1,
                  "strategy.min-available-clients": 1, "strategy.min-valid-replies": 1, **dict(args.config)}
    measured = {name: run_variant(name, work, run_config) for name in args.variants}

    lines = ["# Per-message overhead of a loopback deployment (1 SuperNode, TLS + node auth)", "",
             f"Command: `python benchmarks/deployment.py --rounds {args.rounds}"
             + "".join(f" -c {k}={v}" for k, v in args.config) + "`; run config "
             + ", ".join(f"{k}={v}" for k, v in run_config.items()) + ". Seconds per message.", ""]
    for name, (rows, _) in measured.items():
        lines += [f"## {name}", "", "| # | message | " + " | ".join(PHASES) + " |",
                  "|---|---|" + "---|" * len(PHASES)]
        lines += [f"| {i} | {r['type']} | " + " | ".join("" if r[p] is None else f"{r[p]:.2f}" for p in PHASES) + " |"
                  for i, r in enumerate(rows, 1)]
        lines.append("")
    lines += ["## Medians", "", "| variant | messages | " + " | ".join(PHASES) + " |", "|---|---|" + "---|" * len(PHASES)]
    lines += [f"| {name} | {len(rows)} | " + " | ".join(f"{_median(rows, p):.2f}" for p in PHASES) + " |"
              for name, (rows, _) in measured.items()]
    if {"stock", "lean"} <= set(measured):
        stock, lean = measured["stock"], measured["lean"]
        ratio = _median(stock[0], "overhead") / _median(lean[0], "overhead")
        same = stock[1]["adapter-sha256"] == lean[1]["adapter-sha256"] and stock[1]["eval"] == lean[1]["eval"]
        lines += ["", f"Median overhead per message: stock {_median(stock[0], 'overhead'):.2f} s, "
                  f"lean {_median(lean[0], 'overhead'):.2f} s ({ratio:.1f}x less); median wait between "
                  f"messages {_median(stock[0], 'wait'):.2f} s vs {_median(lean[0], 'wait'):.2f} s.",
                  f"Round seconds: stock {stock[1]['round-seconds']}, lean {lean[1]['round-seconds']}.",
                  f"Same final shared adapter (sha256 {lean[1]['adapter-sha256'][:16]}...) and accuracies: "
                  f"{'yes' if same else 'NO'}."]
    return report(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
