"""The written schema of what a client reports and what a run records (results.json).

Every metric name a client sends and every field of a round record and of results.json is
defined here, once; the client, the strategy, the launcher, the comparison grid, the tuner and
the benchmarks read and write them through these classes. JSON field names are hyphenated.

A client reply's metrics are one flat record (as Flower's MetricRecord): `TrainReport` and
`EvalReport` encode and decode them. A round's record (`RoundRecord`) keeps, per partition id,
the client's `ClientRecord`; `Results` is the whole results.json.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"

# The shared adapter's ArrayRecord in every message (Flower's FedAvg `arrayrecord_key`).
ARRAYS_KEY = "arrays"

# Keys of every client reply.
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"
UNIT_WEIGHT = "unit-weight"  # 1.0 in every reply: the weight key of uniform weighting
# strategy.weighting -> the reply key FedAvg weights by
WEIGHT_KEYS = {"num-examples": NUM_EXAMPLES, "uniform": UNIT_WEIGHT}

# Evaluation variants: the model configurations evaluated on each client (named as in
# feddat_flwr.model.backbone.CONFIGURATIONS), plus the majority-answer baseline.
VARIANTS = ("dat", "shared", "local")
MAJORITY = "majority"
ACCURACIES = (*VARIANTS, MAJORITY)
# Reported by some methods only: FedPFT's proxy itself (its global LoRA and the client's head).
PROXY = "proxy"
OPTIONAL_ACCURACIES = (PROXY,)

_TRAIN = "train-"
_EVAL = "eval-"
_EVAL_SIZE = _EVAL + NUM_EXAMPLES

# Train-message config flag: evaluate the received aggregate before training and report it in the
# reply (one message per client and round; see feddat_flwr.flower.strategy).
EVALUATE_FIRST = "evaluate-first"
# Train- and evaluate-message config: the run's stable key (results.json info "run-key"), which a
# resumed run keeps; clients key their mirrored state by it, not by Flower's run id.
RUN_KEY = "run-key"

Metrics = Mapping[str, float | int]


def _reply_keys(partition_id: int, num_examples: int) -> dict[str, float | int]:
    """The keys every client reply carries (FedAvg weights by one of them)."""
    return {PARTITION_ID: partition_id, NUM_EXAMPLES: num_examples, UNIT_WEIGHT: 1.0}

# Fields of a client's `train` record that are not losses.
TRAIN_TELEMETRY = ("seconds", "steps", "samples-per-s", "data-wait-seconds", "dropped-examples", "peak-rss-mb",
                   "peak-cuda-mb", "clipped")
# Set on a train reply by the client's privacy mod (feddat_flwr.flower.mods): 1 if the update was clipped.
CLIPPED_METRIC = _TRAIN + "clipped"


@dataclass
class TrainReport:
    """What a client reports after training: sizes, losses per configuration trained
    (`<configuration>-task`, `<configuration>-kd` and the total `loss`) and telemetry."""

    partition_id: int
    num_examples: int
    losses: dict[str, float]
    seconds: float
    steps: int
    peak_rss_mb: float
    data_wait_seconds: float = 0.0  # of `seconds`, waiting for the next batch
    dropped_examples: int = 0  # training examples none of whose answers is in the vocabulary
    peak_cuda_mb: float | None = None
    clipped: int | None = None  # under privacy: 1 if the client clipped its update this round

    def record(self) -> dict[str, float]:
        """The `train` field of the client's round record."""
        out = {**self.losses, "seconds": self.seconds, "steps": self.steps,
               "samples-per-s": self.num_examples / self.seconds if self.seconds else 0.0,
               "data-wait-seconds": self.data_wait_seconds, "dropped-examples": self.dropped_examples,
               "peak-rss-mb": self.peak_rss_mb}
        for key, value in (("peak-cuda-mb", self.peak_cuda_mb), ("clipped", self.clipped)):
            if value is not None:
                out[key] = value
        return out

    def to_metrics(self) -> dict[str, float | int]:
        return {**_reply_keys(self.partition_id, self.num_examples),
                **{_TRAIN + k: float(v) for k, v in self.record().items()}}

    @classmethod
    def from_metrics(cls, metrics: Metrics) -> TrainReport:
        train = {k.removeprefix(_TRAIN): float(v) for k, v in metrics.items() if k.startswith(_TRAIN)}
        return cls(
            partition_id=int(metrics[PARTITION_ID]),
            num_examples=int(metrics[NUM_EXAMPLES]),
            losses={k: v for k, v in train.items() if k not in TRAIN_TELEMETRY},
            seconds=train["seconds"],
            steps=int(train["steps"]),
            peak_rss_mb=train["peak-rss-mb"],
            data_wait_seconds=train.get("data-wait-seconds", 0.0),
            dropped_examples=int(train.get("dropped-examples", 0)),
            peak_cuda_mb=train.get("peak-cuda-mb"),
            clipped=int(train["clipped"]) if "clipped" in train else None,
        )


@dataclass
class EvalReport:
    """What a client reports after evaluation: accuracy of every variant and the majority rate."""

    partition_id: int
    num_examples: int
    accuracy: dict[str, float]  # keys ACCURACIES

    def record(self) -> dict[str, float]:
        """The `eval` field of the client's round record."""
        return {**{v: self.accuracy[v] for v in self._fields()}, NUM_EXAMPLES: self.num_examples}

    def _fields(self) -> tuple[str, ...]:
        return (*ACCURACIES, *(v for v in OPTIONAL_ACCURACIES if v in self.accuracy))

    def to_metrics(self) -> dict[str, float | int]:
        """The evaluation reply's metrics. The test size is also `eval-num-examples`, so that the
        report can ride in a train reply, whose `num-examples` is the training size."""
        return {**_reply_keys(self.partition_id, self.num_examples), _EVAL_SIZE: self.num_examples,
                **{_EVAL + v: float(self.accuracy[v]) for v in self._fields()}}

    @classmethod
    def from_metrics(cls, metrics: Metrics) -> EvalReport:
        fields = (*ACCURACIES, *(v for v in OPTIONAL_ACCURACIES if _EVAL + v in metrics))
        return cls(int(metrics[PARTITION_ID]), int(metrics[_EVAL_SIZE]), {v: float(metrics[_EVAL + v]) for v in fields})

    @staticmethod
    def present_in(metrics: Metrics) -> bool:
        """Whether a reply's metrics carry an evaluation."""
        return _EVAL_SIZE in metrics


def train_reply_metrics(train: TrainReport, evaluation: EvalReport | None = None) -> dict[str, float | int]:
    """A train reply's metrics: the training report and, when the client evaluated the received
    aggregate first (`EVALUATE_FIRST`), that evaluation (of the previous round's aggregate)."""
    return {**(evaluation.to_metrics() if evaluation is not None else {}), **train.to_metrics()}


def summarize(evals: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per accuracy field: the mean over clients weighted by their test size, and the worst client."""
    total = sum(e[NUM_EXAMPLES] for e in evals.values()) or 1
    fields = (*ACCURACIES, *(v for v in OPTIONAL_ACCURACIES if all(v in e for e in evals.values())))
    return {v: {"mean": sum(e[v] * e[NUM_EXAMPLES] for e in evals.values()) / total,
                "min": min(e[v] for e in evals.values())} for v in fields}


@dataclass
class Failure:
    node_id: int
    stage: str  # "train" | "evaluate"
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"node-id": self.node_id, "stage": self.stage, "reason": self.reason}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Failure:
        return cls(int(d["node-id"]), d["stage"], d["reason"])


@dataclass
class ClientRecord:
    """One client's part of a round: its node, training size, `train` and `eval` fields, and the
    L2 norm of its shared-adapter update as the server received it (`update-norm`)."""

    node_id: int
    num_examples: int | None = None
    train: dict[str, float] | None = None
    eval: dict[str, float] | None = None
    update_norm: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node-id": self.node_id}
        for key, value in ((NUM_EXAMPLES, self.num_examples), ("train", self.train), ("eval", self.eval),
                           ("update-norm", self.update_norm)):
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClientRecord:
        return cls(int(d["node-id"]), d.get(NUM_EXAMPLES), d.get("train"), d.get("eval"), d.get("update-norm"))


@dataclass
class PrivacyRecord:
    """A round's privacy account (any privacy.mode but none): the epsilon spent by all releases so
    far at `delta` (Flower's RDP accountant), how many aggregates were released, the noise
    multiplier, the clipping norm this round's updates were clipped to and the share of the
    round's clients whose update was clipped."""

    mode: str
    epsilon: float
    delta: float
    releases: int
    noise_multiplier: float
    clipping_norm: float
    clipped_share: float | None

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "epsilon": self.epsilon, "delta": self.delta, "releases": self.releases,
                "noise-multiplier": self.noise_multiplier, "clipping-norm": self.clipping_norm,
                "clipped-share": self.clipped_share}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PrivacyRecord:
        return cls(d["mode"], float(d["epsilon"]), float(d["delta"]), int(d["releases"]),
                   float(d["noise-multiplier"]), float(d["clipping-norm"]), d.get("clipped-share"))


@dataclass
class RoundRecord:
    """One round of results.json. `eval` (see `summarize`) is present in evaluated rounds only."""

    round: int
    lr: float
    clients: dict[str, ClientRecord] = field(default_factory=dict)  # by partition id
    bytes_up: int = 0
    bytes_down: int = 0
    failures: list[Failure] = field(default_factory=list)
    eval: dict[str, dict[str, float]] | None = None
    seconds: float = 0.0
    straggler_seconds: float = 0.0
    privacy: PrivacyRecord | None = None

    def client(self, partition_id: int, node_id: int) -> ClientRecord:
        return self.clients.setdefault(str(partition_id), ClientRecord(node_id))

    def close(self, seconds: float) -> None:
        """Finish the record: clients in partition order, the evaluation summary, timings."""
        self.clients = dict(sorted(self.clients.items(), key=lambda kv: int(kv[0])))
        evals = {pid: c.eval for pid, c in self.clients.items() if c.eval is not None}
        self.eval = summarize(evals) if evals else None
        self.seconds = seconds
        train_seconds = [c.train["seconds"] for c in self.clients.values() if c.train is not None]
        self.straggler_seconds = (max(train_seconds) - statistics.median(train_seconds)
                                  if train_seconds else 0.0)

    def clipped_share(self) -> float | None:
        """The share of the clients that trained whose update was clipped (None: none reported)."""
        bits = [c.train["clipped"] for c in self.clients.values() if c.train is not None and "clipped" in c.train]
        return sum(bits) / len(bits) if bits else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round, "lr": self.lr,
            "clients": {pid: c.to_json() for pid, c in self.clients.items()},
            "bytes-up": self.bytes_up, "bytes-down": self.bytes_down,
            "failures": [f.to_json() for f in self.failures],
        }
        if self.eval is not None:
            out["eval"] = self.eval
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_json()
        out["seconds"] = self.seconds
        out["straggler-seconds"] = self.straggler_seconds
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RoundRecord:
        return cls(
            round=int(d["round"]), lr=float(d["lr"]),
            clients={pid: ClientRecord.from_json(c) for pid, c in d["clients"].items()},
            bytes_up=int(d["bytes-up"]), bytes_down=int(d["bytes-down"]),
            failures=[Failure.from_json(f) for f in d.get("failures", [])],
            eval=d.get("eval"), seconds=float(d["seconds"]),
            straggler_seconds=float(d.get("straggler-seconds", 0.0)),
            privacy=PrivacyRecord.from_json(d["privacy"]) if d.get("privacy") else None,
        )

    def headline(self, num_rounds: int) -> str:
        """The per-round log line: accuracies (mean/min), mean train loss, time, traffic."""
        parts = [f"round {self.round}/{num_rounds}"]
        if self.eval is not None:
            parts += [f"{v} {s['mean']:.3f} (min {s['min']:.3f})" for v, s in self.eval.items()]
        losses = [c.train["loss"] for c in self.clients.values() if c.train is not None]
        if losses:
            parts.append(f"loss {statistics.fmean(losses):.3f}")
        if self.privacy is not None:
            parts.append(f"epsilon {self.privacy.epsilon:.3g} (delta {self.privacy.delta:g})")
        parts.append(f"{self.seconds:.1f} s")
        parts.append(f"{(self.bytes_up + self.bytes_down) / 1e6:.2f} MB")
        if self.failures:
            parts.append(f"{len(self.failures)} failures")
        return " | ".join(parts)


@dataclass
class Results:
    """results.json: the resolved `config`, run `info`, the `rounds`, the `final` evaluation and,
    for a run that ended before its last round, why (`stopped`)."""

    config: dict[str, Any]
    info: dict[str, Any]
    rounds: list[RoundRecord] = field(default_factory=list)
    final: dict[str, dict[str, float]] | None = None
    stopped: str | None = None

    def add_round(self, record: RoundRecord) -> None:
        self.rounds.append(record)
        if record.eval is not None:
            self.final = record.eval

    @property
    def complete(self) -> bool:
        """Whether the run evaluated its last round."""
        return bool(self.final and self.rounds and self.rounds[-1].round == self.config["num-rounds"])

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "info": self.info, "rounds": [r.to_json() for r in self.rounds],
                "final": self.final, "stopped": self.stopped}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Results:
        return cls(d["config"], d.get("info", {}), [RoundRecord.from_json(r) for r in d["rounds"]],
                   d.get("final"), d.get("stopped"))

    @classmethod
    def load(cls, run_dir: Path) -> Results | None:
        """The results in `run_dir`, or None if there are none (yet) or they cannot be read."""
        try:
            return cls.from_json(json.loads((Path(run_dir) / RESULTS_FILE).read_text()))
        except (OSError, ValueError, KeyError):
            return None


def completed_results(run_dir: Path) -> Results | None:
    """The results of the run in `run_dir` if it evaluated its last round, else None."""
    results = Results.load(run_dir)
    return results if results is not None and results.complete else None
