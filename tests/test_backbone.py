"""AdaptedBackbone: the embed-once forward equals ViLT's own, and modes activate the right adapters."""

import pytest
import torch

from feddat_flwr.client import DataSpec, load_client_data
from feddat_flwr.data.encode import iterate_batches
from feddat_flwr.model.backbone import AdaptedBackbone, LoraSpec, load_backbone_for


@pytest.fixture
def backbone_and_batch(tiny_cfg):
    cfg = tiny_cfg()
    backbone = load_backbone_for(cfg)
    batch = next(iterate_batches(load_client_data(DataSpec.from_config(cfg, 0, 3), backbone).train, 8,
                                 shuffle=False))
    saved = {a: backbone.adapter_state(a) for a in ("shared", "local", "teacher")}
    torch.manual_seed(0)
    for name, state in saved.items():  # distinct non-zero adapters, so every mode differs
        backbone.load_adapter(name, {k: torch.randn_like(v) * 0.1 for k, v in state.items()})
    yield backbone, batch
    for name, state in saved.items():  # the backbone is shared by the process's tests
        backbone.load_adapter(name, state)


@torch.no_grad()
def test_embed_then_encode_equals_the_full_vilt_forward_in_every_mode(backbone_and_batch):
    backbone, batch = backbone_and_batch
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = {}
    for mode in ("student", "dat", "local", "global"):
        backbone.set_mode(mode, 0.5)
        outputs[mode] = backbone.encode(backbone.embed(batch))
        assert torch.allclose(outputs[mode], backbone.model(**inputs).pooler_output, atol=1e-5), mode
    assert all(not torch.allclose(outputs["student"], outputs[m]) for m in ("dat", "local", "global"))


@torch.no_grad()
def test_dat_mode_is_the_lambda_weighted_sum_of_local_and_teacher(backbone_and_batch):
    backbone, batch = backbone_and_batch
    x = backbone.embed(batch)
    backbone.set_mode("dat", 0.5)
    dat = backbone.encode(x)
    # Same adapters through a fresh switch (student -> dat) must give the same output: the cached
    # active set and scales are re-applied, not left from the previous mode.
    backbone.set_mode("student", 0.5)
    backbone.set_mode("dat", 0.5)
    assert torch.equal(backbone.encode(x), dat)
    backbone.set_mode("dat", 1.0)
    assert not torch.allclose(backbone.encode(x), dat)


def test_switching_modes_sets_exactly_the_trainable_adapters(backbone_and_batch):
    backbone, _ = backbone_and_batch
    for mode, trainable in (("student", ("shared",)), ("dat", ("local",)), ("dat", ("shared", "local")),
                            ("local", ()), ("student", ("shared", "local"))):
        backbone.set_mode(mode, 0.5, trainable=trainable)
        for adapter in ("shared", "local", "teacher"):
            assert all(p.requires_grad == (adapter in trainable) for p in backbone.parameters_of(adapter)), \
                (mode, trainable, adapter)
    with pytest.raises(ValueError, match="never trainable"):
        backbone.set_mode("dat", 0.5, trainable=("teacher",))


def test_lora_on_the_embeddings_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="projection"):
        AdaptedBackbone(tiny_model_dir, LoraSpec(4, 8, 0.0, ("query", "projection")))
