"""AdaptedBackbone: the embed-once forward equals ViLT's own, and configurations activate the right adapters."""

import pytest
import torch

from feddat_flwr.data.client_data import DataSpec, load_client_data
from feddat_flwr.data.loader import make_loader
from transformers import ViltModel

from feddat_flwr.model.backbone import CONFIGURATIONS, AdaptedBackbone, LoraSpec, load_backbone_for


@pytest.fixture
def backbone_and_batch(tiny_cfg):
    cfg = tiny_cfg()
    backbone = load_backbone_for(cfg)
    data = load_client_data(DataSpec.from_config(cfg, 0, 3), backbone.processor)
    batch = next(iter(make_loader(data.train, data.collator, 8, shuffle=False)))
    saved = {a: backbone.adapter_state(a) for a in ("shared", "local", "teacher")}
    torch.manual_seed(0)
    for name, state in saved.items():  # distinct non-zero adapters, so every configuration differs
        backbone.load_adapter(name, {k: torch.randn_like(v) * 0.1 for k, v in state.items()})
    yield backbone, batch
    for name, state in saved.items():  # the backbone is shared by the process's tests
        backbone.load_adapter(name, state)


@torch.no_grad()
def test_embed_then_encode_equals_the_full_vilt_forward_in_every_configuration(backbone_and_batch):
    backbone, batch = backbone_and_batch
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    outputs = {}
    for configuration in CONFIGURATIONS:
        backbone.set_configuration(configuration, 0.5)
        outputs[configuration] = backbone.encode(backbone.embed(batch))
        assert torch.allclose(outputs[configuration], backbone.model(**inputs).pooler_output, atol=1e-5)
    assert all(not torch.allclose(outputs["shared"], outputs[c]) for c in ("dat", "local", "teacher"))


def _merged_vilt(model_dir: str, lora: LoraSpec, adapters: dict[str, tuple[dict, float]]) -> ViltModel:
    """An independent construction: a plain ViLT whose adapted weights are W + sum of
    scale * (alpha / r) * B @ A over the given adapters (LoRA's definition), no PEFT involved."""
    vilt = ViltModel.from_pretrained(model_dir)
    modules = dict(vilt.named_modules())
    for state, scale in adapters.values():
        for key in [k for k in state if k.endswith("lora_A.weight")]:
            path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = state[key.replace("lora_A", "lora_B")]
            modules[path].weight.data += scale * lora.alpha / lora.rank * (b @ state[key])
    return vilt.eval()


@torch.no_grad()
@pytest.mark.parametrize("lam", [0.5, 0.25])
def test_dat_is_lambda_times_local_plus_lambda_times_teacher(backbone_and_batch, tiny_model_dir, lam):
    backbone, batch = backbone_and_batch
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    local, teacher = backbone.adapter_state("local"), backbone.adapter_state("teacher")
    backbone.model.eval()
    backbone.set_configuration("shared", lam)  # a switch away and back re-applies the DAT's scales
    backbone.set_configuration("dat", lam)
    dat = backbone.encode(backbone.embed(batch))
    expected = _merged_vilt(tiny_model_dir, backbone.spec, {"local": (local, lam), "teacher": (teacher, lam)})
    assert torch.allclose(dat, expected(**inputs).pooler_output, atol=1e-5)
    shared_only = _merged_vilt(tiny_model_dir, backbone.spec, {"local": (local, lam)})
    assert not torch.allclose(dat, shared_only(**inputs).pooler_output, atol=1e-3)  # the teacher counts


def test_initial_adapter_follows_the_seed_and_is_peft_initialisation(tiny_cfg):
    backbone = load_backbone_for(tiny_cfg())
    a, b, again = backbone.initial_adapter(1), backbone.initial_adapter(2), backbone.initial_adapter(1)
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a if "lora_A" in k)
    assert all(not v.any() for k, v in a.items() if "lora_B" in k)  # B = 0: the adapter starts as a no-op
    fresh = AdaptedBackbone(backbone.name_or_path, backbone.spec)  # another process: the same values
    assert all(torch.equal(fresh.initial_adapter(1)[k], a[k]) for k in a)


def test_switching_configurations_sets_exactly_the_trainable_adapters(backbone_and_batch):
    backbone, _ = backbone_and_batch
    for configuration, trainable in (("shared", ("shared",)), ("dat", ("local",)), ("dat", ("shared", "local")),
                                     ("local", ()), ("shared", ("shared", "local"))):
        backbone.set_configuration(configuration, 0.5, trainable=trainable)
        for adapter in ("shared", "local", "teacher"):
            assert all(p.requires_grad == (adapter in trainable) for p in backbone.parameters_of(adapter)), \
                (configuration, trainable, adapter)
    with pytest.raises(ValueError, match="never trainable"):
        backbone.set_configuration("dat", 0.5, trainable=("teacher",))


def test_lora_on_the_embeddings_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="projection"):
        AdaptedBackbone(tiny_model_dir, LoraSpec(4, 8, 0.0, ("query", "projection")))
