"""The ServerApp's work: resolve the config, prepare the run directory, run the FedDAT strategy."""

from __future__ import annotations

import platform
import random
import time
import uuid
from logging import ERROR, INFO, WARNING
from pathlib import Path

import flwr
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from feddat_flwr.checkpoint import Checkpoint
from feddat_flwr.config import flatten, load_config, to_dict
from feddat_flwr.data.vqa_format import check_partition_count
from feddat_flwr.flower.prompt_grid import PromptGrid
from feddat_flwr.flower.privacy import privacy_state, restore_privacy, with_privacy
from feddat_flwr.fedpft.backbone import proxy_backbone_for
from feddat_flwr.flower.proxy_server import proxy_info, proxy_rounds_for
from feddat_flwr.flower.round_book import RoundBook, TooFewValidReplies
from feddat_flwr.flower.strategy import strategy_for
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.packing import pack, unpack
from feddat_flwr.records import RESULTS_FILE, Results
from feddat_flwr.results import ADAPTER_DIR, RunRecorder, prepare_run_dir, save_adapter
from feddat_flwr.training.schedule import round_lr


def _wait_for_nodes(grid: Grid, at_least: int, wait: float = 60.0) -> list[int]:
    """The connected nodes once there are `at_least` (or when `wait` seconds have passed)."""
    deadline = time.monotonic() + wait
    while len(nodes := list(grid.get_node_ids())) < at_least and time.monotonic() < deadline:
        time.sleep(1)
    return nodes


def _check_client_datasets(grid: Grid, data_path: str) -> None:
    """With a run-config data.path (simulation), one client dataset per SuperNode, before training."""
    check_partition_count(Path(data_path), len(_wait_for_nodes(grid, 1)))


def _sample_size(strategy_cfg, num_nodes: int) -> int:
    """How many clients FedAvg's `configure_train` samples from `num_nodes` (as Flower computes it)."""
    return max(int(num_nodes * strategy_cfg["fraction-train"]), strategy_cfg["min-train-clients"])


def _differences(before: dict, now: dict) -> list[str]:
    """The settings (flat keys) in which a resumed run's config differs from the interrupted run's."""
    ignored = {"resume-from", "output-dir"}
    a, b = flatten(before), flatten(now)
    return sorted(k for k in set(a) | set(b) if k not in ignored and a.get(k) != b.get(k))


def _resume(cfg) -> tuple[Path, Checkpoint, Results]:
    """The interrupted run to continue: its directory, checkpoint and results (cut back to the
    rounds before the checkpoint's). Clear errors for a missing checkpoint, a changed setting or a
    run that already finished."""
    run_dir = Path(cfg["resume-from"])
    checkpoint = Checkpoint.load(run_dir)
    results = Results.load(run_dir)
    if results is None:
        raise ValueError(f"resume-from {str(run_dir)!r} has a checkpoint but no readable {RESULTS_FILE}.")
    changed = _differences(results.config, to_dict(cfg))
    if changed:
        raise ValueError(f"resume-from {str(run_dir)!r}: the run config differs from the interrupted run's in "
                         f"{changed}; resume with the same settings.")
    if checkpoint.round >= cfg["num-rounds"]:
        raise ValueError(f"resume-from {str(run_dir)!r}: the run already did all {cfg['num-rounds']} rounds.")
    results.rounds = [r for r in results.rounds if r.round < checkpoint.round]
    results.stopped = None
    return run_dir, checkpoint, results


def run_server(grid: Grid, context: Context) -> None:
    cfg = load_config(context.run_config)
    if cfg.data["path"]:
        _check_client_datasets(grid, cfg.data["path"])
    checkpoint = None
    if cfg["resume-from"]:
        run_dir, checkpoint, previous = _resume(cfg)
        log(INFO, "Resuming %s after round %s (run key %s)", run_dir, checkpoint.round, checkpoint.run_key)
    else:
        run_dir = prepare_run_dir(cfg["output-dir"], context.run_id)
        log(INFO, "FedDAT run directory: %s", run_dir)
    random.seed(cfg["seed"])  # Flower samples clients with `random`
    run_key = checkpoint.run_key if checkpoint else uuid.uuid4().hex[:16]

    # Builds the default model once, before any client starts; the server only needs the adapter.
    backbone = load_backbone_for(cfg, device="cpu")
    method = get_method(cfg["method"])
    initial = backbone.initial_adapter(cfg["seed"]) if method.communicates else {}
    if checkpoint:
        recorder = RunRecorder(run_dir, previous.config, previous.info, results=previous)
        recorder.results.info["resumed-after-rounds"] = [*previous.info.get("resumed-after-rounds", []),
                                                         checkpoint.round]
        initial = checkpoint.adapter
    else:
        recorder = RunRecorder(run_dir, to_dict(cfg), {
            "run-key": run_key,
            "model-path": backbone.name_or_path,
            "adapter-bytes": backbone.adapter_num_bytes(),
            "backbone-bytes": backbone.backbone_num_bytes(),
            "flwr": flwr.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        })
    book = RoundBook(pack(initial).keys(), max_update_ratio=cfg.strategy["max-update-norm"],
                     min_valid_replies=cfg.strategy["min-valid-replies"])
    num_rounds = cfg["num-rounds"]
    strategy = strategy_for(
        cfg.strategy,
        book=book,
        num_rounds=num_rounds,
        lr_for_round=lambda r: round_lr(cfg, r),
        weighting=cfg.strategy["weighting"],
        eval_every=cfg.strategy["eval-every"],
        fraction_train=cfg.strategy["fraction-train"],
        min_train_nodes=cfg.strategy["min-train-clients"],
        min_available_nodes=cfg.strategy["min-available-clients"],
        on_round_end=recorder.add_round,
        run_key=run_key,
    )
    runner = strategy
    if cfg.privacy["mode"] != "none":
        # Flower's DP wrappers calibrate the noise to a fixed number of clients per round.
        population = len(_wait_for_nodes(grid, cfg.strategy["min-available-clients"]))
        runner = with_privacy(strategy, cfg.privacy, _sample_size(cfg.strategy, population), population)
    if checkpoint:
        strategy.resume(checkpoint.round, checkpoint.held, checkpoint.held_seconds)
        random.setstate(checkpoint.rng_state)
        restore_privacy(runner, checkpoint.privacy)

    def global_adapter() -> dict:
        """The latest global adapter, unpacked (the strategy holds it as it travels: packed)."""
        return unpack(strategy.latest_arrays.to_torch_state_dict(), initial)

    def save_checkpoint(server_round: int) -> None:
        proxy, proxy_tensors = strategy.proxy_rounds.state() if strategy.proxy_rounds else ({}, {})
        Checkpoint(run_key, server_round, global_adapter(), book.held, book.held_seconds, random.getstate(),
                   privacy_state(runner), proxy, proxy_tensors).save(run_dir)

    if method.proxy:
        proxy_backbone, proxy = proxy_backbone_for(cfg, device="cpu")  # built now if not cached
        info = recorder.results.info.setdefault("fedpft", proxy_info(proxy))
        if checkpoint:  # alignments after the checkpoint's round run again
            info["alignments"] = [a for a in info["alignments"] if a["after-round"] <= checkpoint.round]
        strategy.use_proxy_rounds(proxy_rounds_for(cfg, backbone, proxy_backbone, proxy, initial, info))
        if checkpoint:
            strategy.proxy_rounds.restore(checkpoint.proxy, checkpoint.proxy_tensors)

    strategy.on_aggregated = save_checkpoint
    prompt_grid = PromptGrid(grid, book=book)  # replies collected within ~50 ms, not Flower's 3-s polls
    try:
        runner.start(
            grid=prompt_grid,
            initial_arrays=ArrayRecord(pack(initial)),
            num_rounds=num_rounds - strategy.offset,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
        )
    except PrivacyBudgetExhausted as exc:  # a clean stop: the last released adapter, evaluated
        log(WARNING, "Stopping before round %s: %s", book.current.round, exc)
        strategy.evaluate_held(prompt_grid)
        recorder.stop(f"privacy budget: {exc}")
    except TooFewValidReplies as exc:
        strategy.close_held()
        recorder.stop(str(exc), book.close())
        log(ERROR, "Run stopped: %s", exc)
        raise
    if method.communicates:
        save_adapter(run_dir / ADAPTER_DIR, global_adapter(),
                     backbone.spec.saved_config(backbone.name_or_path))
    log(INFO, "%s finished: results in %s", cfg["method"], run_dir)
