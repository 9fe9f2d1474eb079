"""What one client does in a round, without Flower: its data, training, evaluation.

The method (feddat_flwr.methods) decides what is trained and whether the shared adapter is
sent back; everything else is the same for every method.
"""

from __future__ import annotations

import functools
import resource
from dataclasses import dataclass

import torch

from omegaconf import DictConfig

from feddat_flwr.client_state import ClientState
from feddat_flwr.data.domains import domain_transform
from feddat_flwr.data.easyvqa import load_easyvqa
from feddat_flwr.data.encode import EncodedSplit, encode_split, label_space
from feddat_flwr.data.partition import client_split, hold_out
from feddat_flwr.data.tasks import make_task_split
from feddat_flwr.data.views import client_view
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import AdaptedBackbone, load_backbone_for
from feddat_flwr.model.head import AnswerHead, new_head
from feddat_flwr.records import MAJORITY, EvalReport, TrainReport
from feddat_flwr.training.evaluate import evaluate_variants, majority_accuracy
from feddat_flwr.training.loop import TrainSettings, train_round


@dataclass
class ClientData:
    partition_id: int
    labels: list[str]
    train: EncodedSplit
    test: EncodedSplit
    majority: float  # test accuracy of always answering the most frequent training answer


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines a client's data; hashable, so it keys the per-process cache."""

    partitioner: str
    views: str
    num_partitions: int
    partition_id: int
    seed: int
    dirichlet_alpha: float
    max_train: int
    max_test: int
    validation_fraction: float

    @classmethod
    def from_config(cls, cfg: DictConfig, partition_id: int, num_partitions: int) -> DataSpec:
        if not 0 <= partition_id < num_partitions:
            raise ValueError(
                f"partition-id {partition_id} is outside [0, {num_partitions}) "
                f"(num-partitions {num_partitions})."
            )
        d = cfg.data
        return cls(d["partitioner"], d["client-views"], num_partitions, partition_id, cfg["seed"],
                   d["dirichlet-alpha"], d["max-train"], d["max-test"], d["validation-fraction"])


@functools.lru_cache(maxsize=16)
def load_client_data(spec: DataSpec, backbone: AdaptedBackbone) -> ClientData:
    """Partition, derive the client's task, encode in its visual domain; once per process.
    With a validation fraction, part of the client's training rows replace its test split."""
    view = client_view(spec.views, spec.partition_id)
    train, test = client_split(
        load_easyvqa("train"), load_easyvqa("test"),
        partitioner=spec.partitioner, num_partitions=spec.num_partitions,
        partition_id=spec.partition_id, seed=spec.seed, dirichlet_alpha=spec.dirichlet_alpha,
        max_train=spec.max_train, max_test=spec.max_test,
    )
    if spec.validation_fraction > 0:
        train, test = hold_out(train, spec.validation_fraction, spec.seed)
    train, test = make_task_split(train, view.task, spec.seed), make_task_split(test, view.task, spec.seed)
    labels = label_space(train)
    transform = domain_transform(view.domain, spec.seed)
    return ClientData(
        partition_id=spec.partition_id,
        labels=labels,
        train=encode_split(train, backbone.processor, labels, image_transform=transform),
        test=encode_split(test, backbone.processor, labels, image_transform=transform),
        majority=majority_accuracy(train["answer"], test["answer"]),
    )


# Seeds of a client's random streams: distinct for every (seed, partition) and (seed, round,
# partition) a run can have (the multipliers are primes larger than any partition count and, for
# rounds, than seed * 1009 + partition), so no two clients or rounds share a stream.
def _head_seed(seed: int, partition_id: int) -> int:
    return seed * 1009 + partition_id


def _round_seed(seed: int, server_round: int, partition_id: int) -> int:
    return seed * 100_003 + server_round * 1_009 + partition_id


def initial_state(backbone: AdaptedBackbone, data: ClientData, global_adapter: dict[str, torch.Tensor],
                  seed: int) -> ClientState:
    """A client's state before its first round: `local` starts as the first global adapter it
    receives (LoRA's B = 0, so its delta starts at zero), the head freshly initialised."""
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
    stats = train_round(backbone, head, data.train, TrainSettings.from_config(cfg, lr), generator=generator)
    new_state = ClientState(
        local=backbone.adapter_state("local"),
        head={k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()},
        labels=state.labels,
        rounds_trained=state.rounds_trained + 1,
    )
    peak_cuda_mb = None
    if backbone.device.type == "cuda":
        peak_cuda_mb = torch.cuda.max_memory_allocated(backbone.device) / 2**20
        torch.cuda.empty_cache()  # release cached blocks for the next client served by this actor
    report = TrainReport(
        partition_id=data.partition_id, num_examples=len(data.train), losses=stats.losses,
        seconds=stats.seconds, steps=stats.steps,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak_cuda_mb=peak_cuda_mb,
    )
    shared = backbone.adapter_state("shared") if get_method(cfg["method"]).communicates else {}
    return shared, report, new_state


def evaluate_client(backbone: AdaptedBackbone, data: ClientData, state: ClientState | None,
                    global_adapter: dict[str, torch.Tensor], cfg: DictConfig) -> EvalReport:
    """Accuracy of every variant on the client's test split, and the majority baseline."""
    _, head = _prepare(backbone, data, state, global_adapter, cfg["seed"])
    accuracy = evaluate_variants(backbone, head, data.test, lam=cfg.feddat["lambda"],
                                 batch_size=cfg.train["eval-batch-size"])
    return EvalReport(data.partition_id, len(data.test), {**accuracy, MAJORITY: data.majority})


def client_for(cfg: DictConfig, node_config) -> tuple[AdaptedBackbone, ClientData]:
    """The process-wide backbone and this node's (cached) data, from the run and node config."""
    backbone = load_backbone_for(cfg)
    spec = DataSpec.from_config(cfg, int(node_config["partition-id"]), int(node_config["num-partitions"]))
    return backbone, load_client_data(spec, backbone)
