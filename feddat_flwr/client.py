"""What one client does in a round, without Flower: its data, training, evaluation.

The method (feddat_flwr.methods) decides what is trained and whether the shared adapter is
sent back; everything else is the same for every method.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from feddat_flwr.client_state import STATE_DIR_KEY, ClientState
from feddat_flwr.data.client_data import DATA_CACHE_DIR, DATA_PATH_KEY, ClientData, DataSpec, load_client_data
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import AdaptedBackbone, load_backbone_for
from feddat_flwr.model.head import AnswerHead, new_head
from feddat_flwr.records import MAJORITY, PROXY, EvalReport, TrainReport
from feddat_flwr.training.evaluate import evaluate_variants
from feddat_flwr.training.loop import TrainSettings, train_round


# Seeds of a client's random streams: distinct for every (seed, partition) and (seed, round,
# partition) a run can have (the multipliers are primes larger than any partition count and, for
# rounds, than seed * 1009 + partition), so no two clients or rounds share a stream.
# (Reduced modulo 2**63: torch seeds are 64-bit, and a deployed node's id may stand for its partition.)
def _head_seed(seed: int, partition_id: int) -> int:
    return (seed * 1009 + partition_id) % 2**63


def _round_seed(seed: int, server_round: int, partition_id: int) -> int:
    return (seed * 100_003 + server_round * 1_009 + partition_id) % 2**63


def initial_state(backbone: AdaptedBackbone, data: ClientData, global_adapter: dict[str, torch.Tensor],
                  seed: int) -> ClientState:
    """A client's state before its first round: `local` starts as the first global adapter it
    receives (a no-op at first: LoRA's B, a bottleneck's up-projection is zero), the head freshly
    initialised."""
    head = new_head(backbone.hidden_size, len(data.labels), _head_seed(seed, data.partition_id))
    return ClientState(
        local={k: v.clone() for k, v in global_adapter.items()},
        head=head.state_dict(),
        labels=list(data.labels),
    )


def _prepare(backbone: AdaptedBackbone, data: ClientData, state: ClientState | None,
             global_adapter: dict[str, torch.Tensor], seed: int) -> tuple[ClientState, AnswerHead]:
    """Load the global adapter as `shared` and `teacher`, the client's `local` and head.
    An empty global adapter (a method that communicates nothing) stands for the run's initial
    one, which the server would have sent: the same function of the same seed."""
    global_adapter = global_adapter or backbone.initial_adapter(seed)
    state = state or initial_state(backbone, data, global_adapter, seed)
    if state.labels != data.labels:
        raise ValueError(
            f"Client {data.partition_id}: stored head was trained for answers {state.labels[:5]}..., "
            f"the data now has {data.labels[:5]}...; use a fresh state directory."
        )
    backbone.load_adapter("shared", global_adapter)
    backbone.load_adapter("teacher", global_adapter)
    backbone.load_adapter("local", state.local)
    head = AnswerHead(backbone.hidden_size, len(data.labels))  # its values come from the state
    head.load_state_dict(state.head)
    return state, head.to(backbone.device)


def train_client(backbone: AdaptedBackbone, data: ClientData, state: ClientState | None,
                 global_adapter: dict[str, torch.Tensor], cfg: DictConfig, *, lr: float, server_round: int,
                 ) -> tuple[dict[str, torch.Tensor], TrainReport, ClientState]:
    """One round of training on this client: returns (new shared adapter, report, new private state).
    The returned adapter is empty when the method communicates nothing."""
    state, head = _prepare(backbone, data, state, global_adapter, cfg["seed"])
    round_seed = _round_seed(cfg["seed"], server_round, data.partition_id)
    torch.manual_seed(round_seed)  # LoRA dropout
    generator = torch.Generator().manual_seed(round_seed)
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backbone.device)
    stats = train_round(backbone, head, data.train, data.collator, TrainSettings.from_config(cfg, lr),
                        generator=generator)
    new_state = ClientState(
        local=backbone.adapter_state("local"),
        head={k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()},
        labels=state.labels,
        rounds_trained=state.rounds_trained + 1,
        last_round=server_round,
        proxy=state.proxy,
        proxy_version=state.proxy_version,
    )
    peak_cuda_mb = None
    if backbone.device.type == "cuda":
        peak_cuda_mb = torch.cuda.max_memory_allocated(backbone.device) / 2**20
        torch.cuda.empty_cache()  # release cached blocks for the next client served by this actor
    report = TrainReport(
        partition_id=data.partition_id, num_examples=len(data.train), losses=stats.losses,
        seconds=stats.seconds, steps=stats.steps, data_wait_seconds=stats.data_wait_seconds,
        dropped_examples=data.dropped,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak_cuda_mb=peak_cuda_mb,
    )
    shared = backbone.adapter_state("shared") if get_method(cfg["method"]).communicates else {}
    return shared, report, new_state


def evaluate_client(backbone: AdaptedBackbone, data: ClientData, state: ClientState | None,
                    global_adapter: dict[str, torch.Tensor], cfg: DictConfig,
                    proxy_backbone: AdaptedBackbone | None = None) -> EvalReport:
    """Accuracy of every variant on the client's test split, and the majority baseline; with a
    `proxy_backbone` (FedPFT), also the proxy's own (the global adapter and the head on it)."""
    settings = {"lam": cfg.feddat["lambda"], "batch_size": cfg.train["eval-batch-size"],
                "num_workers": cfg.train["num-workers"]}
    _, head = _prepare(backbone, data, state, global_adapter, cfg["seed"])
    accuracy = evaluate_variants(backbone, head, data.test, data.collator, **settings)
    if proxy_backbone is not None:
        _, head = _prepare(proxy_backbone, data, state, global_adapter, cfg["seed"])
        accuracy[PROXY] = evaluate_variants(proxy_backbone, head, data.test, data.collator, **settings,
                                            variants=("shared",))["shared"]
    return EvalReport(data.partition_id, len(data.test), {**accuracy, MAJORITY: data.majority})


def client_for(cfg: DictConfig, node_config: Mapping[str, Any], node_id: int = 0,
               ) -> tuple[AdaptedBackbone, ClientData]:
    """The process-wide backbone and this node's (cached) data, from the run and node config.
    A node with its own `data-path` needs no partition-id (its node id then stands for it); a node
    with a `state-dir` keeps its embedded-data rows on disk there (see feddat_flwr.data.client_data)."""
    backbone = load_backbone_for(cfg)
    data_path = str(node_config.get(DATA_PATH_KEY, ""))
    if data_path:
        partition_id = int(node_config.get("partition-id", node_id))
        num_partitions = int(node_config.get("num-partitions", 0))
    else:
        for key in ("partition-id", "num-partitions"):
            if key not in node_config:
                raise ValueError(f"node config has no {key!r} (got {sorted(node_config)}); give partition-id "
                                 f"and num-partitions, or the node's own dataset as {DATA_PATH_KEY!r}.")
        partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    state_dir = str(node_config.get(STATE_DIR_KEY, ""))
    spec = DataSpec.from_config(cfg, partition_id, num_partitions, data_path=data_path,
                                cache_dir=str(Path(state_dir) / DATA_CACHE_DIR) if state_dir else "")
    return backbone, load_client_data(spec, backbone.processor)
