"""FedPFT's neuron-level alignment during the federation.

Clients count, in the alignment rounds, how often each compressed FFN neuron's post-GELU
activation is exactly zero (`ZeroCounter`); the server sums the counts, freezes the
`align-keep` share of each compressed layer's neurons that were most often active (lowest APoZ,
ties broken by a seeded shuffle) and re-distils the others, with b2 and the LayerNorms, against
the full model carrying the global LoRA (`align`). The paper's student carries the global LoRA
too; the authors' code uses whatever LoRA the last client left in the shared object (their code
differs from their paper there: we follow the paper).

A caveat the paper shares: GELU is exactly zero only where its input underflows (x < about -5.5 in
fp32), so the counts are sparse and the tie-break decides much of the choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from feddat_flwr.fedpft.distill import distill
from feddat_flwr.fedpft.subfm import Kept, compressed_parameter_names, compressed_tensors

ZEROS_PREFIX = "fedpft-zeros-"  # + layer index: a train reply's per-neuron zero counts (a list of ints)
TOKENS_KEY = "fedpft-tokens"  # the number of token activations counted


class ZeroCounter:
    """Counts each compressed layer's exact-zero FFN activations while it is open (forward hooks)."""

    def __init__(self, vilt: torch.nn.Module, layers: Iterable[int]):
        self.vilt, self.layers = vilt, sorted(layers)
        self.zeros = {i: torch.zeros(0, dtype=torch.long) for i in self.layers}
        self.tokens = 0
        self._handles = []

    def _hook(self, layer: int):
        def count(_module, _inputs, output: torch.Tensor) -> None:
            zeros = (output.detach() == 0).flatten(0, -2).sum(0).cpu()
            self.zeros[layer] = zeros if not len(self.zeros[layer]) else self.zeros[layer] + zeros
            if layer == self.layers[0]:
                self.tokens += output.shape[:-1].numel()
        return count

    def __enter__(self) -> ZeroCounter:
        self._handles = [self.vilt.encoder.layer[i].intermediate.register_forward_hook(self._hook(i))
                         for i in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def metrics(self) -> dict[str, list[int] | int]:
        return {**{f"{ZEROS_PREFIX}{i}": z.tolist() for i, z in self.zeros.items()}, TOKENS_KEY: self.tokens}


def summed_counts(metrics: Iterable[Mapping], layers: Iterable[int]) -> tuple[dict[int, torch.Tensor], int]:
    """The clients' zero counts and token totals, summed (replies without counts are skipped)."""
    zeros: dict[int, torch.Tensor] = {}
    tokens = 0
    for m in metrics:
        if TOKENS_KEY not in m:
            continue
        tokens += int(m[TOKENS_KEY])
        for i in layers:
            counts = torch.tensor(list(m[f"{ZEROS_PREFIX}{i}"]), dtype=torch.long)
            zeros[i] = zeros[i] + counts if i in zeros else counts
    return zeros, tokens


def frozen_neurons(zeros: Mapping[int, torch.Tensor], tokens: int, keep: float,
                   generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Per layer, a mask of the round(keep * width) neurons with the lowest APoZ (zeros / tokens)."""
    masks = {}
    for layer, counts in sorted(zeros.items()):
        apoz = counts.double() / max(tokens, 1)
        order = torch.randperm(len(counts), generator=generator)
        ranked = order[torch.argsort(apoz[order], stable=True)]
        mask = torch.zeros(len(counts), dtype=torch.bool)
        mask[ranked[: round(keep * len(counts))]] = True
        masks[layer] = mask
    return masks


def align(teacher: torch.nn.Module, student: torch.nn.Module, kept: Kept, frozen: Mapping[int, torch.Tensor],
          batches: Iterator[Mapping[str, torch.Tensor]], *, steps: int, lr: float,
          progress: bool = False) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Re-distil the student's (the proxy's) unfrozen compressed neurons, b2 and LayerNorms
    against the teacher; (the compressed layers' new parameters, the losses). The caller has put
    the global adapter into both models."""
    names = compressed_parameter_names(kept)
    parameters = [student.get_parameter(n) for n in names]
    before = {n: p.detach().clone() for n, p in zip(names, parameters)}

    @torch.no_grad()
    def restore_frozen() -> None:
        for i, mask in frozen.items():
            prefix = f"encoder.layer.{i}."
            for name, rows in (("intermediate.dense.weight", True), ("intermediate.dense.bias", True),
                               ("output.dense.weight", False)):
                p, old = student.get_parameter(prefix + name), before[prefix + name]
                if rows:
                    p[mask] = old[mask]
                else:
                    p[:, mask] = old[:, mask]

    losses = distill(teacher, student, batches, parameters, steps=steps, lr=lr, after_step=restore_frozen,
                     desc="FedPFT alignment", progress=progress)
    return compressed_tensors(student, kept), losses
