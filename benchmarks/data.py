"""Client memory and data-loading time at real image sizes: 100 vs 1,000 vs 2,500 examples.

    python benchmarks/data.py --out docs/results/data.md [--sizes 100 1000 2500] [--workers 0 2]

A client dataset of N examples with 384 x (384..640) JPEG images is written in the client-dataset
format (saved with `datasets`, images embedded), then, for each N and each DataLoader worker count,
a fresh process loads it through the app's own data path (load_client_data) and trains one epoch
(`train_round`) of a small random ViLT with ViLT-B/32's image processing (shortest edge 384, 32-px
patches). It reports the process's peak RSS, seconds per epoch and the share of the epoch spent
waiting for the next batch. Targets: peak RSS at 2,500 within 1.25x of that at 100; data wait
under 10 % of step time with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import report

HIDDEN = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def make_model(out: Path) -> str:
    from transformers import ViltConfig, ViltImageProcessor, ViltModel, ViltProcessor

    from feddat_flwr.model.backbone import resolve_model_path

    tokenizer = ViltProcessor.from_pretrained(resolve_model_path("default")).tokenizer
    config = ViltConfig(**HIDDEN, image_size=384, patch_size=32, max_position_embeddings=tokenizer.model_max_length,
                        vocab_size=len(tokenizer), max_image_length=-1)
    ViltModel(config).save_pretrained(out)
    ViltProcessor(ViltImageProcessor(size={"shortest_edge": 384}, size_divisor=32), tokenizer).save_pretrained(out)
    return str(out)


def make_dataset(out: Path, n: int, seed: int = 0) -> None:
    """n examples, 13 answers, one smooth random image (384 x 384..640) per example."""
    from datasets import Dataset, DatasetDict, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    answers = [f"answer{k}" for k in range(13)]

    def rows():
        for i in range(n + max(n // 5, 20)):
            width = int(rng.integers(384, 641))
            base = rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)
            image = PILImage.fromarray(base).resize((width, 384), PILImage.BILINEAR)
            yield {"image": image, "question": "what is in the image?", "answer": answers[i % 13]}

    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})
    ds = Dataset.from_generator(rows, features=features)
    DatasetDict({"train": ds.select(range(n)), "test": ds.select(range(n, len(ds)))}).save_to_disk(str(out))


def measure(model: str, dataset: str, workers: int) -> dict:
    """In this (fresh) process: load the client's data the app's way and train one epoch."""
    import torch

    from feddat_flwr.config import load_config
    from feddat_flwr.data.client_data import DataSpec, load_client_data
    from feddat_flwr.model.backbone import load_backbone_for
    from feddat_flwr.model.head import new_head
    from feddat_flwr.training.loop import TrainSettings, train_round

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config({"model.name-or-path": model, "data.max-train": 0, "data.max-test": 0,
                       "train.num-workers": workers})
    backbone = load_backbone_for(cfg, device="cpu")
    started = time.perf_counter()
    data = load_client_data(DataSpec.from_config(cfg, 0, 1, data_path=dataset), backbone.processor)
    load_seconds = time.perf_counter() - started
    head = new_head(backbone.hidden_size, len(data.labels), seed=0)
    backbone.load_adapter("shared", backbone.initial_adapter(0))
    backbone.load_adapter("local", backbone.initial_adapter(0))
    backbone.load_adapter("teacher", backbone.initial_adapter(0))
    stats = train_round(backbone, head, data.train, data.collator, TrainSettings.from_config(cfg, 1e-4),
                        generator=torch.Generator().manual_seed(0))
    return {"examples": len(data.train), "workers": workers, "load_s": load_seconds, "epoch_s": stats.seconds,
            "wait_share": stats.data_wait_seconds / stats.seconds, "steps": stats.steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 1000, 2500])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", nargs=3, metavar=("MODEL", "DATASET", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], int(args.measure[2]))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "model")
        for n in args.sizes:
            make_dataset(Path(tmp) / f"data-{n}", n)
            for workers in args.workers:
                out = subprocess.run([sys.executable, __file__, "--measure", model, str(Path(tmp) / f"data-{n}"),
                                      str(workers)], capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    base = {r["workers"]: r["peak_rss_mb"] for r in rows if r["examples"] == min(args.sizes)}
    lines = [f"## Client data path at real image sizes ({os.cpu_count()} CPU cores)", "",
             "Command: `python benchmarks/data.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
             f"Random ViLT ({HIDDEN['hidden_size']} hidden, {HIDDEN['num_hidden_layers']} layers), ViLT-B/32 image "
             "processing (shortest edge 384, 32-px patches), images 384 x 384..640 (JPEG, embedded in the saved "
             "dataset), batch 32, FedDAT fast schedule, one epoch; each row a fresh process.", "",
             "| examples | workers | peak RSS (MB) | RSS / RSS at smallest | load (s) | epoch (s) | data wait share |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['examples']} | {r['workers']} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] / base[r['workers']]:.2f} | {r['load_s']:.1f} | {r['epoch_s']:.1f} | "
                     f"{100 * r['wait_share']:.1f} % |")
    return report(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
