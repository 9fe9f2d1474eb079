"""The ServerApp's work: resolve the config, prepare the run directory, run the FedDAT strategy."""

from __future__ import annotations

import platform
import random
from logging import INFO

import flwr
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid

from feddat_flwr.config import load_config, to_dict
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.prompt_grid import PromptGrid
from feddat_flwr.results import ADAPTER_DIR, RunRecorder, prepare_run_dir, save_adapter
from feddat_flwr.strategy import FedDAT
from feddat_flwr.train import round_lr


def run_server(grid: Grid, context: Context) -> None:
    cfg = load_config(context.run_config)
    random.seed(cfg.seed)  # Flower samples clients with `random`
    torch.manual_seed(cfg.seed)
    run_dir = prepare_run_dir(cfg["output-dir"], context.run_id)
    log(INFO, "FedDAT run directory: %s", run_dir)

    # Builds the default model once, before any client starts; the server only needs the adapter shapes.
    backbone = load_backbone_for(cfg, device="cpu")
    communicate = cfg.method != "local-only"
    initial = backbone.initial_adapter if communicate else {}
    info = {
        "model-path": backbone.name_or_path,
        "adapter-bytes": backbone.adapter_num_bytes(),
        "backbone-bytes": backbone.backbone_num_bytes(),
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    recorder = RunRecorder(run_dir, to_dict(cfg), info)
    recorder.write()
    num_rounds = cfg["num-rounds"]
    strategy = FedDAT(
        adapter_keys=initial.keys(),
        num_rounds=num_rounds,
        lr_for_round=lambda r: round_lr(cfg.train.lr, cfg.train["lr-schedule"], cfg.train["min-lr-ratio"],
                                        r, num_rounds),
        weighting=cfg.strategy.weighting,
        eval_every=cfg.strategy["eval-every"],
        fraction_train=cfg.strategy["fraction-train"],
        min_train_nodes=cfg.strategy["min-train-clients"],
        min_available_nodes=cfg.strategy["min-available-clients"],
        on_round_end=recorder.add_round,
    )
    result = strategy.start(
        grid=PromptGrid(grid),  # replies collected within ~50 ms, not Flower's 3-s polls
        initial_arrays=ArrayRecord(initial),
        num_rounds=num_rounds,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=strategy.end_of_round,
    )
    if communicate:
        save_adapter(run_dir / ADAPTER_DIR, result.arrays.to_torch_state_dict(),
                     backbone.lora.peft_config(backbone.name_or_path))
    log(INFO, "%s finished: results in %s", cfg.method, run_dir)
