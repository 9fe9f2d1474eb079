"""The ServerApp's work: resolve the config, prepare the run directory, run the FedDAT strategy."""

from __future__ import annotations

import platform
import random
import time
from logging import INFO
from pathlib import Path

import flwr
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid

from feddat_flwr.config import load_config, to_dict
from feddat_flwr.data.vqa_format import check_partition_count
from feddat_flwr.flower.prompt_grid import PromptGrid
from feddat_flwr.flower.round_book import RoundBook
from feddat_flwr.flower.strategy import FedDAT
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.results import ADAPTER_DIR, RunRecorder, prepare_run_dir, save_adapter
from feddat_flwr.training.schedule import round_lr


def _check_client_datasets(grid: Grid, data_path: str, wait: float = 60.0) -> None:
    """With a run-config data.path (simulation), one client dataset per SuperNode, before training."""
    deadline = time.monotonic() + wait
    while not (nodes := list(grid.get_node_ids())) and time.monotonic() < deadline:
        time.sleep(1)
    check_partition_count(Path(data_path), len(nodes))


def run_server(grid: Grid, context: Context) -> None:
    cfg = load_config(context.run_config)
    if cfg.data["path"]:
        _check_client_datasets(grid, cfg.data["path"])
    random.seed(cfg["seed"])  # Flower samples clients with `random`
    run_dir = prepare_run_dir(cfg["output-dir"], context.run_id)
    log(INFO, "FedDAT run directory: %s", run_dir)

    # Builds the default model once, before any client starts; the server only needs the adapter.
    backbone = load_backbone_for(cfg, device="cpu")
    method = get_method(cfg["method"])
    initial = backbone.initial_adapter(cfg["seed"]) if method.communicates else {}
    info = {
        "model-path": backbone.name_or_path,
        "adapter-bytes": backbone.adapter_num_bytes(),
        "backbone-bytes": backbone.backbone_num_bytes(),
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    recorder = RunRecorder(run_dir, to_dict(cfg), info)
    book = RoundBook(initial.keys())
    num_rounds = cfg["num-rounds"]
    strategy = FedDAT(
        book=book,
        num_rounds=num_rounds,
        lr_for_round=lambda r: round_lr(cfg, r),
        weighting=cfg.strategy["weighting"],
        eval_every=cfg.strategy["eval-every"],
        fraction_train=cfg.strategy["fraction-train"],
        min_train_nodes=cfg.strategy["min-train-clients"],
        min_available_nodes=cfg.strategy["min-available-clients"],
        on_round_end=recorder.add_round,
    )
    result = strategy.start(
        grid=PromptGrid(grid, book=book),  # replies collected within ~50 ms, not Flower's 3-s polls
        initial_arrays=ArrayRecord(initial),
        num_rounds=num_rounds,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )
    if method.communicates:
        save_adapter(run_dir / ADAPTER_DIR, result.arrays.to_torch_state_dict(),
                     backbone.lora.peft_config(backbone.name_or_path))
    log(INFO, "%s finished: results in %s", cfg["method"], run_dir)
