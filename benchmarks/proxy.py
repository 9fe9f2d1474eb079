"""FedPFT's point, measured: a client's training step and its memory on the proxy vs the full model.

    python benchmarks/proxy.py --out docs/results/proxy-cost.md
    python benchmarks/proxy.py --configs vilt-b32 --steps 10

For each model size, the same step (fedpft-proxy trains with FedAvg's step: LoRA on the attention
plus the head, task loss) runs on the full model and on its FedPFT proxy (FFNs of all but the first
and last layer cut to a quarter, by saliency). Each (model, proxy or full) runs in a fresh
process, so its memory figures are its own. The default model is the embedded one with its distilled proxy as the run builds it; the
ViLT-B/32-sized model has random weights (cut by saliency, not distilled: timing only).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from transformers import ViltModel

from feddat_flwr.config import load_config
from feddat_flwr.fedpft.backbone import proxy_backbone_for
from feddat_flwr.fedpft.subfm import kept_neurons, sub_fm
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import AdaptedBackbone, adapter_spec, resolve_model_path
from feddat_flwr.model.head import new_head
from feddat_flwr.training.loop import TrainSettings, make_optimizer
from common import random_vilt_b32, report
from step import synthetic_batch

METHOD = "fedpft-proxy"


def one(config: str, model: str, path: str, batch_size: int, steps: int) -> dict:
    """Median step time and peak memory of one model in this process."""
    cfg = load_config({"method": METHOD})  # its LoRA targets and step settings (the default model's proxy)
    lora = adapter_spec(cfg)
    if model == "full":
        backbone = AdaptedBackbone(path, lora)
    elif config == "default":
        backbone = proxy_backbone_for(cfg, device="cpu")[0]
    else:
        full = ViltModel.from_pretrained(path)
        width = full.config.intermediate_size // 4
        backbone = AdaptedBackbone(path, lora, base=sub_fm(full, kept_neurons(full, [0, -1], width)))
    vilt = backbone.vilt.config
    head = new_head(backbone.hidden_size, 13, seed=0)
    batch = synthetic_batch(backbone, batch_size, vilt.image_size, vilt.max_position_embeddings, 13,
                            torch.device("cpu"))
    batch["targets"] = batch.pop("labels")
    s = TrainSettings.from_config(cfg, lr=1e-4)
    step, optimizer = get_method(METHOD).step("fast"), make_optimizer(backbone, head, s)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give back what loading the full checkpoint left free
    before = _rss_mb()
    peak, done = [before], threading.Event()

    def sample() -> None:  # activations live inside a step: sample the resident set while steps run
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = []
    for i in range(steps + 2):  # 2 warm-up steps
        start = time.perf_counter()
        step(backbone, head, optimizer, batch, s)
        if i >= 2:
            times.append(time.perf_counter() - start)
    done.set()
    sampler.join()
    weights = sum(p.numel() * p.element_size() for n, p in backbone.vilt.named_parameters() if "lora_" not in n)
    return {"ms": statistics.median(times) * 1000, "weights-mb": weights / 2**20,
            "resident-mb": before, "step-mb": peak[0] - before,
            "peak-rss-mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["default", "vilt-b32"], choices=["default", "vilt-b32"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="batch size of the default model")
    parser.add_argument("--batch-b32", type=int, default=4, help="batch size of the ViLT-B/32-sized model")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "MODEL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.one:
        config, model, path = args.one
        print(json.dumps(one(config, model, path, args.batch if config == "default" else args.batch_b32, args.steps)))
        return 0
    lines = ["## Client step on the FedPFT proxy vs the full model (CPU, each in its own process)", "",
             "Command: `python benchmarks/proxy.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
             f"torch threads {torch.get_num_threads()}, median of {args.steps} steps (fedpft-proxy's step).", "",
             "Weights: the backbone's frozen parameters (MB); resident: the process before its first step "
             "(weights, data, libraries); step: the most the resident set grew during a step (activations, "
             "gradients, optimizer state); peak: the process's peak, which for the proxy includes loading the "
             "full checkpoint it is cut from.", "",
             "| model | batch | weights MB full / proxy | step ms full / proxy | time proxy/full "
             "| resident MB full / proxy | step MB full / proxy | step memory proxy/full | peak RSS MB full / proxy |",
             "|" + "---|" * 9]
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            path = (resolve_model_path("default") if config == "default"
                    else random_vilt_b32(Path(tmp) / "b32", resolve_model_path("default")))
            r = {}
            for model in ("full", "proxy"):
                out = subprocess.run([sys.executable, __file__, "--one", config, model, path, "--steps", str(args.steps),
                                      "--batch", str(args.batch), "--batch-b32", str(args.batch_b32)],
                                     capture_output=True, text=True, check=True)
                r[model] = json.loads(out.stdout.strip().splitlines()[-1])
            f, p = r["full"], r["proxy"]
            lines.append(f"| {config} | {args.batch if config == 'default' else args.batch_b32} "
                         f"| {f['weights-mb']:.1f} / {p['weights-mb']:.1f} | {f['ms']:.1f} / {p['ms']:.1f} "
                         f"| {p['ms'] / f['ms']:.2f} | {f['resident-mb']:.0f} / {p['resident-mb']:.0f} "
                         f"| {f['step-mb']:.0f} / {p['step-mb']:.0f} | {p['step-mb'] / max(f['step-mb'], 1e-9):.2f} "
                         f"| {f['peak-rss-mb']:.0f} / {p['peak-rss-mb']:.0f} |")
            print(lines[-1], flush=True)
    return report(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
