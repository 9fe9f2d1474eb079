"""Layer-level distillation of a sub-FM from its full model: every layer's output hidden states
of the student matched to the teacher's (normalised MSE), on the same embedded inputs.

Used before the federation (proxy.py, teacher = the full model) and in the alignment rounds
(alignment.py, teacher = the full model carrying the global LoRA). The embeddings are computed
once per batch by the teacher: the sub-FM's are the same frozen copy, so both see the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformers import ViltModel
from transformers.masking_utils import create_bidirectional_mask


def embedded(vilt: ViltModel, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ViLT's joint text + image embedding, its token mask [B, T]) of a model-ready batch."""
    return vilt.embeddings(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                           batch["pixel_values"], batch["pixel_mask"], None, None, image_token_type_idx=1)


def layer_outputs(vilt: ViltModel, hidden: torch.Tensor, mask: torch.Tensor) -> Sequence[torch.Tensor]:
    """Every encoder layer's output hidden states for embedded inputs."""
    attention = create_bidirectional_mask(config=vilt.config, inputs_embeds=hidden, attention_mask=mask)
    return vilt.encoder(hidden, attention_mask=attention, output_hidden_states=True).hidden_states[1:]


def normalised_mse(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                   mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of ||h_T - h_S||^2 / ||h_T||^2 over the real (unpadded) tokens."""
    weight = mask[..., None].to(teacher[0].dtype)
    per_layer = [((t - s).pow(2) * weight).sum() / (t.pow(2) * weight).sum().clamp_min(1e-12)
                 for t, s in zip(teacher, student, strict=True)]
    return torch.stack(per_layer).mean()


def distill(teacher: ViltModel, student: ViltModel, batches: Iterator[Mapping[str, torch.Tensor]],
            parameters: list[torch.nn.Parameter], *, steps: int, lr: float,
            after_step: Callable[[], None] | None = None, desc: str = "distilling",
            progress: bool = True) -> list[float]:
    """`steps` AdamW steps on `parameters` (of the student) with a linear decay of `lr` to 0; each
    step's loss. `after_step` runs after every optimizer step (the alignment restores its frozen
    neurons there). The caller sets what else is trainable; the teacher runs without gradients."""
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        batch = next(batches)
        with torch.no_grad():
            hidden, mask = embedded(teacher, batch)
            target = layer_outputs(teacher, hidden, mask)
        loss = normalised_mse(target, layer_outputs(student, hidden, mask), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    for p in parameters:
        p.requires_grad_(False)
    return losses
