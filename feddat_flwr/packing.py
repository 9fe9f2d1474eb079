"""The shared adapter on the wire: one flat array instead of one per tensor.

Flower sends every array of a message as separate objects (the array and its chunks), each its
own request between SuperNode and SuperLink; the default model's 16-tensor LoRA adapter is then a
36-object message, ViLT-B/32's 48-tensor one about 100. Packed, it is one array: the tensors
flattened and concatenated in sorted-key order. Everything the server does with the adapter is
element-wise or over the whole update (FedAvg, median, trimmed mean, Krum's distances, clipping
norms, DP noise, the round book's checks), so it works on the packed array unchanged; the server
and each client unpack it with their own model's adapter as the layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

PACKED_KEY = "shared-adapter"


def pack(adapter: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{PACKED_KEY: the tensors flattened in sorted-key order}; {} for an empty adapter."""
    if not adapter:
        return {}
    dtypes = {t.dtype for t in adapter.values()}
    if len(dtypes) != 1:
        raise ValueError(f"cannot pack an adapter with mixed dtypes {sorted(map(str, dtypes))}")
    return {PACKED_KEY: torch.cat([adapter[k].reshape(-1) for k in sorted(adapter)])}


def unpack(packed: Mapping[str, torch.Tensor], layout: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter `pack` made, with the keys and shapes of `layout` (any adapter of the model)."""
    if not packed:
        return {}
    if set(packed) != {PACKED_KEY}:
        raise ValueError(f"a packed adapter has the one key {PACKED_KEY!r}, got {sorted(packed)[:5]}")
    flat = packed[PACKED_KEY]
    sizes = [layout[k].numel() for k in sorted(layout)]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"packed adapter has shape {tuple(flat.shape)}; this model's adapter packs to "
                         f"({sum(sizes)},)")
    return {k: part.reshape(layout[k].shape).clone()
            for k, part in zip(sorted(layout), torch.split(flat, sizes), strict=True)}
