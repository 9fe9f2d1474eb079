"""Time one local training step: plain LoRA (student only) vs FedDAT reference order vs fast schedule.

    python benchmarks/step.py                       # default model + ViLT-B/32-sized config, CPU
    python benchmarks/step.py --configs default --steps 30 --out docs/results/step-cpu.md
    python benchmarks/step.py --device cuda --peak-tflops 989   # H100 SXM: bf16 autocast, TF32, share of peak

All three run in one process on the same batch, so machine noise largely cancels in the ratios.
Targets: fast / plain <= 2.1 (the floor of 2 forwards + 2 backwards is about 2.0) and
reference / fast >= 1.2. The ViLT-B/32-sized model has random weights (timing only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViltModel

from feddat_flwr.config import load_config
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import AdaptedBackbone, adapter_spec, resolve_model_path
from feddat_flwr.model.head import new_head
from feddat_flwr.training.loop import TrainSettings, make_optimizer
from common import VILT_B32, random_vilt_b32, report

# name -> (method, schedule): plain LoRA is fedavg's step (the shared adapter alone, task loss).
SCHEDULES = {"plain": ("fedavg", "fast"), "reference": ("feddat", "reference"), "fast": ("feddat", "fast")}


def synthetic_batch(backbone: AdaptedBackbone, batch_size: int, image_size: int, text_len: int, num_labels: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = backbone.vilt.config.vocab_size
    batch = {
        "input_ids": torch.randint(5, vocab, (batch_size, text_len), generator=g),
        "attention_mask": torch.ones(batch_size, text_len, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, text_len, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=g),
        "pixel_mask": torch.ones(batch_size, image_size, image_size, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def time_schedules(backbone, head, batch, steps: int, device: torch.device) -> tuple[dict[str, float], dict[str, int]]:
    """Median ms per step of each schedule, and the floating-point operations of one step
    (matmuls, convolutions, attention; forward and backward; counted by torch's FlopCounterMode).
    The schedules take turns (one step each, round-robin), so a slow spell of the machine hits
    all of them alike and the ratios stay meaningful."""
    runs = {}
    for name, (method, schedule) in SCHEDULES.items():
        s = TrainSettings.from_config(load_config({"method": method, "feddat.schedule": schedule}), lr=1e-4)
        runs[name] = (get_method(method).step(schedule), s, make_optimizer(backbone, head, s))
    flops = {}
    for name, (step, s, optimizer) in runs.items():
        with FlopCounterMode(display=False) as counter:
            step(backbone, head, optimizer, batch, s)
        flops[name] = counter.get_total_flops()
    times: dict[str, list[float]] = {name: [] for name in SCHEDULES}
    for i in range(steps + 3):  # 3 warm-up rounds
        for name, (step, s, optimizer) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(backbone, head, optimizer, batch, s)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}, flops


def bench_config(name: str, path: str, image_size: int, text_len: int, batch_size: int, steps: int,
                 device: torch.device, peak_tflops: float | None) -> dict:
    backbone = AdaptedBackbone(path, adapter_spec(load_config({})), device=str(device))
    head = new_head(backbone.hidden_size, 13, seed=0).to(device)
    batch = synthetic_batch(backbone, batch_size, image_size, text_len, 13, device)
    ms, flops = time_schedules(backbone, head, batch, steps, device)
    row = {"config": name, "batch": batch_size, **ms, "bf16": backbone.amp}
    row["fast/plain"] = row["fast"] / row["plain"]
    row["reference/fast"] = row["reference"] / row["fast"]
    row["samples/s (fast)"] = batch_size / row["fast"] * 1000
    row["TFLOP/s (fast)"] = flops["fast"] / row["fast"] / 1e9
    row["% of peak (fast)"] = 100 * row["TFLOP/s (fast)"] / peak_tflops if peak_tflops else "-"
    return row


def table(rows: list[dict], header: str) -> str:
    cols = ["config", "batch", "plain", "reference", "fast", "fast/plain", "reference/fast", "samples/s (fast)",
            "TFLOP/s (fast)", "% of peak (fast)"]
    lines = [header, "", "| " + " | ".join(c if c in ("config", "batch") else c + (" ms" if c in SCHEDULES else "")
                                           for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.{4 if c.startswith('TFLOP') else 2}f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["default", "vilt-b32"], choices=["default", "vilt-b32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="batch size of the default model")
    parser.add_argument("--batch-b32", type=int, default=4, help="batch size of the ViLT-B/32-sized model")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s at the step's precision, e.g. 989 for H100 SXM bf16 dense; "
                             "adds the share of it the fast schedule reaches")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    default_path = resolve_model_path("default")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            if name == "default":
                config = ViltModel.from_pretrained(default_path).config
                rows.append(bench_config(name, default_path, config.image_size, config.max_position_embeddings,
                                         args.batch, args.steps, device, args.peak_tflops))
            else:
                path = random_vilt_b32(Path(tmp) / "b32", default_path)
                rows.append(bench_config(name, path, VILT_B32["image_size"], VILT_B32["max_position_embeddings"],
                                         args.batch_b32, args.steps, device, args.peak_tflops))
            print(table(rows[-1:], ""), flush=True)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    header = (f"## Local step time ({device.type}{', bf16 autocast' if rows[0]['bf16'] else ''}, torch threads {threads}, "
              f"median of {args.steps} steps, schedules taking turns)\n\nCommand: `python benchmarks/step.py "
              + " ".join(argv if argv is not None else sys.argv[1:]) + "`")
    text = table(rows, header)
    return report(text.splitlines(), args.out)


if __name__ == "__main__":
    sys.exit(main())
