"""Bottleneck adapters against their definition, and what every adapter kind shares (the interface)."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import ViltModel

from feddat_flwr.config import ConfigError, load_config
from feddat_flwr.data.client_data import DataSpec, load_client_data
from feddat_flwr.data.loader import make_loader
from feddat_flwr.model.adapters import CONFIG_FILE, WEIGHTS_FILE
from feddat_flwr.model.backbone import ADAPTER_KINDS, ADAPTERS, CONFIGURATIONS, AdaptedBackbone, adapter_spec
from feddat_flwr.model.bottleneck import BottleneckSpec, load_bottleneck
from feddat_flwr.model.head import new_head
from feddat_flwr.packing import unpack
from feddat_flwr.results import save_adapter
from feddat_flwr.training.loop import TrainSettings, make_optimizer
from feddat_flwr.training.steps import fast_step
from helpers.client_rounds import run_rounds, strategy_and_initial

WIDTH = 6  # unlike the tiny model's hidden size (32), so transposed shapes would show


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    """A bottleneck backbone of this module's own (tests set the adapter values they need)."""
    return AdaptedBackbone(tiny_model_dir, BottleneckSpec(WIDTH))


@pytest.fixture(scope="module")
def data(tiny_cfg, backbone):
    return load_client_data(DataSpec.from_config(tiny_cfg(), 0, 3), backbone.processor)


@pytest.fixture(scope="module")
def batch(data):
    return next(iter(make_loader(data.train, data.collator, 8, shuffle=False)))


# Two forwards of one ViLT on one batch differ by up to ~3e-8 here (CPU kernels), so whole-model
# outputs are compared at 1e-6, far below what any adapter term changes; a layer's, exactly.
TIGHT = dict(atol=1e-6, rtol=0)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "targets"}


def _random(backbone, seed):
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) * 0.1 for k, v in backbone.adapter_state("shared").items()}


def _reference(model_dir, adapters):
    """An independent construction: a plain ViLT whose layer outputs h become
    h + sum of scale * up(ReLU(down(h))) over the given (state, scale) pairs (the definition)."""
    vilt = ViltModel.from_pretrained(model_dir).eval()
    for i, layer in enumerate(vilt.encoder.layer):
        def add_adapters(module, args, h, prefix=f"encoder.layer.{i}.output.bottleneck."):
            out = h
            for state, scale in adapters:
                down = F.linear(h, state[prefix + "down.weight"], state[prefix + "down.bias"])
                out = out + scale * F.linear(F.relu(down), state[prefix + "up.weight"], state[prefix + "up.bias"])
            return out
        layer.output.register_forward_hook(add_adapters)
    return vilt


@torch.no_grad()
def test_a_new_bottleneck_adapter_returns_its_layers_output_exactly(backbone):
    for adapter in ADAPTERS:
        backbone.load_adapter(adapter, backbone.initial_adapter(3))
    torch.manual_seed(0)
    for configuration in CONFIGURATIONS:
        backbone.set_configuration(configuration, 0.5)
        for vilt_layer in backbone.vilt.encoder.layer:
            ffn = torch.randn(2, 5, vilt_layer.intermediate.dense.out_features)
            residual = torch.randn(2, 5, backbone.hidden_size)
            assert torch.equal(vilt_layer.output(ffn, residual), vilt_layer.output.base_layer(ffn, residual))


def test_keys_shapes_and_parameter_names(backbone):
    state = backbone.adapter_state("shared")
    hidden = backbone.hidden_size
    expected = {}
    for i in range(len(backbone.vilt.encoder.layer)):
        prefix = f"encoder.layer.{i}.output.bottleneck."
        expected |= {prefix + "down.weight": (WIDTH, hidden), prefix + "down.bias": (WIDTH,),
                     prefix + "up.weight": (hidden, WIDTH), prefix + "up.bias": (hidden,)}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    for adapter in ADAPTERS:  # each adapter's own parameters, named like PEFT's
        own = {id(p) for p in backbone.parameters_of(adapter)}
        names = [n for n, p in backbone.model.named_parameters() if id(p) in own]
        assert len(names) == len(expected) and all(f".bottleneck.{adapter}." in n for n in names)


@torch.no_grad()
@pytest.mark.parametrize("kind", list(ADAPTER_KINDS))
def test_a_new_adapter_of_every_kind_gives_the_frozen_models_output(tiny_cfg, tiny_model_dir, batch, kind):
    base = ViltModel.from_pretrained(tiny_model_dir).eval()
    frozen = base(**_inputs(batch)).pooler_output
    backbone = AdaptedBackbone(tiny_model_dir, adapter_spec(tiny_cfg({"adapter.kind": kind})), base=base)
    backbone.set_configuration("shared")  # no adapter trainable
    assert backbone.vilt is base and not any(p.requires_grad for p in base.parameters())
    for adapter in ADAPTERS:
        backbone.load_adapter(adapter, backbone.initial_adapter(1))
    for configuration in CONFIGURATIONS:
        backbone.set_configuration(configuration, 0.5)
        assert torch.allclose(backbone.model(**_inputs(batch)).pooler_output, frozen, **TIGHT), configuration
        assert torch.allclose(backbone.encode(backbone.embed(batch)), frozen, atol=1e-5), configuration


@torch.no_grad()
@pytest.mark.parametrize("lam", [0.5, 0.25])
def test_dat_is_h_plus_lambda_local_plus_lambda_teacher(backbone, batch, tiny_model_dir, lam):
    states = {a: _random(backbone, seed) for seed, a in enumerate(ADAPTERS)}
    for adapter, state in states.items():
        backbone.load_adapter(adapter, state)
    backbone.model.eval()
    backbone.set_configuration("shared", lam)  # a switch away and back re-applies the DAT's scales
    backbone.set_configuration("dat", lam)
    dat = backbone.model(**_inputs(batch)).pooler_output
    expected = _reference(tiny_model_dir, [(states["local"], lam), (states["teacher"], lam)])
    assert torch.allclose(dat, expected(**_inputs(batch)).pooler_output, **TIGHT)
    assert torch.allclose(backbone.encode(backbone.embed(batch)), dat, atol=1e-5)
    local_only = _reference(tiny_model_dir, [(states["local"], lam)])
    assert not torch.allclose(dat, local_only(**_inputs(batch)).pooler_output, atol=1e-3)  # the teacher counts
    backbone.set_configuration("shared", lam)
    student = _reference(tiny_model_dir, [(states["shared"], 1.0)])
    assert torch.allclose(backbone.model(**_inputs(batch)).pooler_output, student(**_inputs(batch)).pooler_output,
                          **TIGHT)


def test_fast_feddat_step_trains_shared_and_local_and_keeps_the_teacher_bit_identical(tiny_cfg, backbone, data,
                                                                                    batch):
    for seed, adapter in enumerate(ADAPTERS):
        backbone.load_adapter(adapter, _random(backbone, seed))
    start = {a: backbone.adapter_state(a) for a in ADAPTERS}
    head = new_head(backbone.hidden_size, len(data.labels), seed=0)
    s = TrainSettings.from_config(tiny_cfg({"adapter.kind": "bottleneck"}), 0.01)
    fast_step(backbone, head, make_optimizer(backbone, head, s), batch, s)
    after = {a: backbone.adapter_state(a) for a in ADAPTERS}
    assert all(torch.equal(after["teacher"][k], start["teacher"][k]) for k in start["teacher"])
    for adapter in ("shared", "local"):  # every tensor, down and up, is trained
        assert all(not torch.equal(after[adapter][k], start[adapter][k]) for k in start[adapter]), adapter


def test_adapter_state_round_trips_and_a_wrong_key_is_named(backbone):
    state = _random(backbone, 5)
    backbone.load_adapter("local", state)
    assert all(torch.equal(backbone.adapter_state("local")[k], v) for k, v in state.items())
    wrong = {k.replace("up.bias", "up.b"): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"Adapter 'local' state does not match.*up\.b'"):
        backbone.load_adapter("local", wrong)


def test_initial_adapter_follows_the_seed_down_random_up_zero(backbone, tiny_model_dir):
    a, b, again = backbone.initial_adapter(1), backbone.initial_adapter(2), backbone.initial_adapter(1)
    assert all(torch.equal(a[k], again[k]) for k in a)
    downs = [k for k in a if k.endswith("down.weight")]
    assert all(not torch.equal(a[k], b[k]) for k in downs)
    assert all(0.01 < float(a[k].std()) < 0.03 for k in downs)  # the authors' N(0, 0.02)
    assert all(not v.any() for k, v in a.items() if k not in downs)  # up = 0: the adapter starts as a no-op
    fresh = AdaptedBackbone(tiny_model_dir, BottleneckSpec(WIDTH))  # another process: the same values
    assert all(torch.equal(fresh.initial_adapter(1)[k], a[k]) for k in a)


@torch.no_grad()
def test_the_saved_adapter_loads_with_load_bottleneck_and_gives_the_same_outputs(backbone, batch, tmp_path,
                                                                               tiny_model_dir):
    state = _random(backbone, 7)
    out = save_adapter(tmp_path / "shared-adapter", state, backbone.spec.saved_config(tiny_model_dir))
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["kind"] == "bottleneck" and config["width"] == WIDTH and config["nonlinearity"] == "relu"
    loaded = load_bottleneck(ViltModel.from_pretrained(config["base_model_name_or_path"]), out).eval()
    backbone.load_adapter("shared", state)
    backbone.model.eval()
    backbone.set_configuration("shared")
    assert torch.allclose(loaded(**_inputs(batch)).pooler_output, backbone.model(**_inputs(batch)).pooler_output,
                          **TIGHT)


def test_load_bottleneck_refuses_a_lora_adapter(tiny_cfg, tiny_model_dir, tmp_path):
    lora = adapter_spec(tiny_cfg())
    out = save_adapter(tmp_path / "lora", {}, lora.saved_config(tiny_model_dir))
    with pytest.raises(ValueError, match="not a bottleneck adapter.*PeftModel.from_pretrained"):
        load_bottleneck(ViltModel.from_pretrained(tiny_model_dir), out)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"adapter.kind": "prefix"}, r"'adapter.kind' is 'prefix'; allowed: lora, bottleneck"),
    ({"adapter.bottleneck-width": 0}, r"'adapter.bottleneck-width' must be > 0, got 0"),
])
def test_config_rejects_a_bad_kind_or_width(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


def test_two_feddat_rounds_with_bottleneck_adapters_through_the_client_app_and_the_strategy(
        tiny_model_dir, task_identity):
    run_config = {"model.name-or-path": tiny_model_dir, "adapter.kind": "bottleneck", "data.max-train": 32,
                  "data.max-test": 16, "train.batch-size": 16, "num-rounds": 2}
    strategy, initial = strategy_and_initial(run_config, num_rounds=2, num_nodes=2)
    assert all(".bottleneck." in k for k in initial)
    aggregate, contexts = run_rounds(strategy, run_config, initial, [5, 6], 2)
    assert [r.failures for r in strategy.history] == [[], []]
    assert all(0 <= r.eval["dat"]["mean"] <= 1 for r in strategy.history)
    moved = unpack(aggregate.to_torch_state_dict(), initial)
    assert any(not torch.equal(moved[k], initial[k]) for k in initial if ".up." in k)  # up starts at zero
    local = contexts[5].state["feddat.local-adapter"].to_torch_state_dict()
    assert set(local) == set(initial) and any(not torch.equal(local[k], initial[k]) for k in initial)
