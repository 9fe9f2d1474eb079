"""Which visual domain and task each client has (config key `data.client-views`).

same: every client sees clean images and answers the easy-VQA questions (heterogeneity then
comes from the partitioner alone); domain: client i sees its images in DOMAINS[i % 5]; task:
client i solves TASKS[i % 3] on clean images, with its own label space.
"""

from __future__ import annotations

from dataclasses import dataclass

from feddat_flwr.data.domains import DOMAINS
from feddat_flwr.data.tasks import TASKS

VIEWS = ("same", "domain", "task")


@dataclass(frozen=True)
class ClientView:
    """The visual domain (see DOMAINS) and the task (see TASKS) of one client's data."""

    domain: str
    task: str


def client_view(views: str, partition_id: int) -> ClientView:
    if views not in VIEWS:
        raise ValueError(f"Unknown client views {views!r}; allowed: {', '.join(VIEWS)}.")
    if partition_id < 0:
        raise ValueError(f"partition_id must be >= 0, got {partition_id}.")
    if views == "domain":
        return ClientView(domain=DOMAINS[partition_id % len(DOMAINS)], task="vqa")
    if views == "task":
        return ClientView(domain="clean", task=TASKS[partition_id % len(TASKS)])
    return ClientView(domain="clean", task="vqa")
