"""FedPFT's sub-FM: the full ViLT with the FFNs of most layers cut down to their salient neurons.

Every layer keeps its attention, LayerNorms, and the model its embeddings and pooler, unchanged;
the retained layers keep their whole FFN; every other layer keeps the `width` neurons with the
largest L2 norm of [W1 row; W2 column] (the neuron's input and output weights), in their original
order, with their W1 rows, b1 entries and W2 columns (b2 is copied). The attention shapes are the
full model's, so an adapter on the attention trained on the sub-FM loads into the full model by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers import ViltModel

Kept = Mapping[int, list[int]]  # compressed layer index -> the kept neurons of its FFN, ascending

# The parameters of a compressed layer that the distillations train (and that make a proxy):
# its FFN (both projections, weights and biases) and its two LayerNorms.
COMPRESSED_PARAMETERS = ("intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight",
                         "output.dense.bias", "layernorm_before.weight", "layernorm_before.bias",
                         "layernorm_after.weight", "layernorm_after.bias")


def resolve_layers(retained: Iterable[int], num_layers: int) -> set[int]:
    """Layer indices (negative ones count from the end) as 0..num_layers-1; an error if out of range."""
    out = set()
    for index in retained:
        if not -num_layers <= index < num_layers:
            raise ValueError(f"fedpft.retained-layers: layer {index} does not exist; the model has "
                             f"{num_layers} layers (0..{num_layers - 1}, or -1 for the last).")
        out.add(index % num_layers)
    return out


def ffn_saliency(layer: nn.Module) -> torch.Tensor:
    """Each FFN neuron's L2 norm of [its W1 row; its W2 column]."""
    w1, w2 = layer.intermediate.dense.weight, layer.output.dense.weight  # [I, H], [H, I]
    return (w1.detach().pow(2).sum(1) + w2.detach().pow(2).sum(0)).sqrt()


def kept_neurons(vilt: ViltModel, retained: Iterable[int], width: int) -> dict[int, list[int]]:
    """For every layer not retained: its `width` most salient FFN neurons, in their original order."""
    layers = vilt.encoder.layer
    keep = resolve_layers(retained, len(layers))
    intermediate = vilt.config.intermediate_size
    if not 0 < width <= intermediate:
        raise ValueError(f"fedpft.ffn-width {width}: must be in 1..{intermediate} (the model's FFN size).")
    return {i: sorted(ffn_saliency(layer).topk(width).indices.tolist())
            for i, layer in enumerate(layers) if i not in keep}


def _cut(linear: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> nn.Linear:
    weight, bias = linear.weight.detach(), linear.bias.detach()
    if rows is not None:
        weight, bias = weight[rows], bias[rows]
    if columns is not None:
        weight = weight[:, columns]
    out = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


def sub_fm(vilt: ViltModel, kept: Kept) -> ViltModel:
    """`vilt`, changed in place: its layers in `kept` keep only those FFN neurons."""
    for i, neurons in kept.items():
        layer = vilt.encoder.layer[i]
        index = torch.tensor(neurons, dtype=torch.long)
        layer.intermediate.dense = _cut(layer.intermediate.dense, rows=index)
        layer.output.dense = _cut(layer.output.dense, columns=index)
    return vilt


def compressed_parameter_names(kept: Kept) -> list[str]:
    """Names (in the ViltModel) of the parameters a proxy's distillations train."""
    return [f"encoder.layer.{i}.{p}" for i in sorted(kept) for p in COMPRESSED_PARAMETERS]


def compressed_tensors(vilt: ViltModel, kept: Kept) -> dict[str, torch.Tensor]:
    """A detached copy of the compressed layers' trained parameters."""
    return {n: vilt.get_parameter(n).detach().to("cpu", copy=True) for n in compressed_parameter_names(kept)}


@torch.no_grad()
def load_compressed(vilt: ViltModel, tensors: Mapping[str, torch.Tensor]) -> None:
    for name, value in tensors.items():
        vilt.get_parameter(name).copy_(value)
