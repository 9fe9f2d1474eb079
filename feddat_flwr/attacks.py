"""Hostile clients for robustness evaluation (`attack.kind`, `attack.partitions`, `attack.scale`).

Each attack turns an honest client's shared-adapter reply into a hostile one, given the adapter
the server sent. The client's mod (feddat_flwr.flower.mods.attack_mod) applies it to the clients
of the partition ids named in `attack.partitions`; a run with `attack.kind=none` (the default) has
none. Nothing private is ever put into a reply: `extra-key` adds a tensor of zeros that is only
named like the private head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from feddat_flwr.robustness import update_norm

Arrays = Mapping[str, np.ndarray]
Attack = Callable[[Arrays, Arrays, float, np.random.Generator], dict[str, np.ndarray]]


def nan_update(sent: Arrays, reply: Arrays, scale: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, np.nan) for k, v in reply.items()}


def scaled_random(sent: Arrays, reply: Arrays, scale: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A Gaussian direction, scaled to `scale` times the norm of the honest update."""
    honest = update_norm(sent, reply) or 1.0
    noise = {k: rng.standard_normal(v.shape) for k, v in sent.items()}
    norm = update_norm({k: np.zeros_like(n) for k, n in noise.items()}, noise)
    return {k: (v + noise[k] * (scale * honest / norm)).astype(v.dtype) for k, v in sent.items()}


def wrong_shape(sent: Arrays, reply: Arrays, scale: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    first = next(iter(reply))
    return {**reply, first: reply[first][:-1]}


def extra_key(sent: Arrays, reply: Arrays, scale: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {**reply, "head.weight": np.zeros((4, 4), dtype=np.float32)}


ATTACKS: dict[str, Attack | None] = {
    "none": None,
    "nan": nan_update,
    "scaled-random": scaled_random,
    "wrong-shape": wrong_shape,
    "extra-key": extra_key,
}


def attacked_partitions(value: str) -> set[int]:
    """`attack.partitions` ("0,3") as a set of partition ids; ValueError naming a bad entry."""
    ids = set()
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"'attack.partitions' has {part!r}; give comma-separated partition ids such as 0,3")
        ids.add(int(part))
    return ids
