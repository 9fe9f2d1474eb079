"""Which visual domain and task each client has in the four heterogeneity benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from feddat_flwr.data.domains import DOMAINS
from feddat_flwr.data.tasks import TASKS

BENCHMARKS = ("function", "domain", "label-skew", "task")
# The partitioner (feddat_flwr.data.partition.PARTITIONERS) that splits each benchmark's data:
# function shift = one question type per client, domain shift = iid rows, label skew =
# Dirichlet over answers, task shift = iid over images (the task rows are built per image).
BENCHMARK_PARTITIONER = {
    "function": "question-type",
    "domain": "iid",
    "label-skew": "dirichlet",
    "task": "iid",
}


@dataclass(frozen=True)
class ClientView:
    """The visual domain (see DOMAINS) and the task (see TASKS) of one client's data."""

    domain: str
    task: str


def client_view(benchmark: str, partition_id: int, num_partitions: int) -> ClientView:
    """Client ``partition_id``'s view: domain benchmark -> DOMAINS[i % 5] on vqa, task
    benchmark -> TASKS[i % 3] on clean images, function and label-skew -> clean vqa."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; allowed: {', '.join(BENCHMARKS)}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    if benchmark == "domain":
        return ClientView(domain=DOMAINS[partition_id % len(DOMAINS)], task="vqa")
    if benchmark == "task":
        return ClientView(domain="clean", task=TASKS[partition_id % len(TASKS)])
    return ClientView(domain="clean", task="vqa")
