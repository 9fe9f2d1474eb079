"""FedPFT (proxy fine-tuning, Peng et al. 2024): the sub-FM, its distillations, the proxy's LoRA in
the full model, and fedpft-proxy rounds through the ClientApp and the strategy."""

import pytest
import torch
from datasets import Dataset, DatasetDict
from datasets import Image as DatasetImage
from flwr.app import ArrayRecord
from PIL import Image
from transformers import ViltModel, ViltProcessor

from feddat_flwr.checkpoint import Checkpoint
from feddat_flwr.config import ConfigError, load_config
from feddat_flwr.fedpft.alignment import ZeroCounter, align, frozen_neurons, summed_counts
from feddat_flwr.fedpft.backbone import proxy_backbone_for
from feddat_flwr.fedpft.distill import distill
from feddat_flwr.fedpft.public_data import public_batches
from feddat_flwr.fedpft.subfm import compressed_parameter_names, ffn_saliency, kept_neurons, sub_fm
from feddat_flwr.flower.proxy_rounds import PROXY_RECORD, VERSION
from feddat_flwr.flower.proxy_server import proxy_info, proxy_rounds_for
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.records import PROXY
from helpers.client_rounds import run_rounds, strategy_and_initial


@pytest.fixture(scope="session")
def public_data(tmp_path_factory) -> str:
    """A small image-text dataset in the client dataset format (the server's public data)."""
    colours = ["red", "green", "blue", "yellow"]
    n = 32
    rows = {"image": [Image.new("RGB", (64, 64), colours[i % 4]) for i in range(n)],
            "question": [f"is the shape {colours[(i * 3) % 4]}?" for i in range(n)], "answer": ["yes"] * n}
    ds = Dataset.from_dict(rows).cast_column("image", DatasetImage())
    path = tmp_path_factory.mktemp("public") / "public"
    DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="session")
def fedpft_run_config(tiny_model_dir, public_data, tmp_path_factory) -> dict:
    """fedpft-proxy on the tiny model (2 layers, FFN 64): layer 1 cut to 16 neurons."""
    return {"model.name-or-path": tiny_model_dir, "model.cache-dir": str(tmp_path_factory.mktemp("cache")),
            "method": "fedpft-proxy", "fedpft.retained-layers": "0", "fedpft.ffn-width": 16,
            "fedpft.public-data": public_data, "fedpft.distill-steps": 20, "fedpft.batch-size": 8,
            "fedpft.align-every": 1, "fedpft.align-steps": 4, "fedpft.align-keep": 0.5,
            "data.max-train": 32, "data.max-test": 16, "train.batch-size": 16, "num-rounds": 2}


def _full(tiny_model_dir) -> ViltModel:
    return ViltModel.from_pretrained(tiny_model_dir).eval().requires_grad_(False)


def test_the_sub_fm_keeps_the_salient_neurons_in_order_and_everything_else(tiny_model_dir):
    full = _full(tiny_model_dir)
    kept = kept_neurons(full, [0], 16)
    assert list(kept) == [1] and kept[1] == sorted(kept[1]) and len(set(kept[1])) == 16
    saliency = ffn_saliency(full.encoder.layer[1])
    assert saliency[kept[1]].min() >= saliency[[j for j in range(64) if j not in kept[1]]].max()
    sub = sub_fm(ViltModel.from_pretrained(tiny_model_dir), kept)
    layer, original = sub.encoder.layer[1], full.encoder.layer[1]
    assert layer.intermediate.dense.weight.shape == (16, 32) and layer.output.dense.weight.shape == (32, 16)
    assert torch.equal(layer.intermediate.dense.weight, original.intermediate.dense.weight[kept[1]])
    assert torch.equal(layer.output.dense.weight, original.output.dense.weight[:, kept[1]])
    assert torch.equal(layer.output.dense.bias, original.output.dense.bias)
    full_params, sub_params = dict(full.named_parameters()), dict(sub.named_parameters())
    same = [n for n in full_params if not n.startswith("encoder.layer.1.intermediate")
            and not n.startswith("encoder.layer.1.output.")]
    assert same and all(torch.equal(full_params[n], sub_params[n]) for n in same)  # attention, LN, embeddings...
    assert sub.encoder.layer[0].intermediate.dense.weight.shape == (64, 32)  # the retained layer


def test_a_sub_fm_of_the_whole_width_is_the_full_model_and_bad_settings_are_errors(tiny_model_dir):
    full = _full(tiny_model_dir)
    sub = sub_fm(ViltModel.from_pretrained(tiny_model_dir), kept_neurons(full, [], 64)).eval()
    inputs = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "pixel_values": torch.rand(1, 3, 64, 64)}
    outputs = []
    for model in (sub, full):
        torch.manual_seed(0)  # ViLT samples the image patches' order
        with torch.no_grad():
            outputs.append(model(**inputs).last_hidden_state)
    assert torch.allclose(*outputs, atol=1e-5)
    with pytest.raises(ValueError, match="layer 2 does not exist; the model has 2 layers"):
        kept_neurons(full, [2], 16)
    with pytest.raises(ValueError, match="ffn-width 65: must be in 1..64"):
        kept_neurons(full, [0], 65)


def test_the_layer_distillation_loss_decreases(tiny_model_dir, public_data):
    full = _full(tiny_model_dir)
    kept = kept_neurons(full, [0], 16)
    student = sub_fm(ViltModel.from_pretrained(tiny_model_dir), kept).eval().requires_grad_(False)
    batches = public_batches(public_data, ViltProcessor.from_pretrained(tiny_model_dir), batch_size=8, seed=0)
    torch.manual_seed(0)
    losses = distill(full, student, batches, [student.get_parameter(n) for n in compressed_parameter_names(kept)],
                     steps=30, lr=3e-3, progress=False)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert not student.encoder.layer[0].attention.attention.query.weight.requires_grad


def test_the_proxy_is_built_once_deterministically_and_its_lora_loads_into_the_full_model_by_name(fedpft_run_config):
    cfg = load_config(fedpft_run_config)
    proxy_backbone, proxy = proxy_backbone_for(cfg)
    full = load_backbone_for(cfg)
    assert proxy.stats["proxy-parameters"] < proxy.stats["full-parameters"]
    assert proxy.stats["loss-last"] < proxy.stats["loss-first"]
    assert (proxy.path / "kept.json").is_file() and len(proxy.digest) == 64
    trained = {k: torch.randn_like(v) for k, v in proxy_backbone.adapter_state("shared").items()}
    assert any(".attention.output.dense." in k for k in trained) and all(".intermediate." not in k for k in trained)
    full.load_adapter("shared", trained)  # same names, same shapes
    assert all(torch.equal(full.adapter_state("shared")[k], v) for k, v in trained.items())


def test_the_alignment_keeps_the_frozen_neurons_and_changes_the_others(tiny_model_dir, public_data):
    full = _full(tiny_model_dir)
    kept = kept_neurons(full, [0], 16)
    student = sub_fm(ViltModel.from_pretrained(tiny_model_dir), kept).eval().requires_grad_(False)
    batches = public_batches(public_data, ViltProcessor.from_pretrained(tiny_model_dir), batch_size=8, seed=0)
    with ZeroCounter(student, kept) as counter, torch.no_grad():
        student(**{k: v for k, v in next(batches).items() if k != "token_type_ids"})
    metrics = counter.metrics()
    assert metrics["fedpft-tokens"] > 0 and len(metrics["fedpft-zeros-1"]) == 16
    zeros, tokens = summed_counts([metrics, metrics, {}], kept)  # a reply without counts is skipped
    assert tokens == 2 * metrics["fedpft-tokens"]
    zeros[1][:4] = tokens  # four neurons never active: never frozen
    frozen = frozen_neurons(zeros, tokens, 0.5, torch.Generator().manual_seed(0))
    assert int(frozen[1].sum()) == 8 and not frozen[1][:4].any()
    w1 = student.encoder.layer[1].intermediate.dense.weight.detach().clone()
    layers, _ = align(full, student, kept, frozen, batches, steps=3, lr=1e-2)
    new_w1 = layers["encoder.layer.1.intermediate.dense.weight"]
    assert torch.equal(new_w1[frozen[1]], w1[frozen[1]]) and not torch.equal(new_w1[~frozen[1]], w1[~frozen[1]])


def test_fedpft_settings_are_checked_before_training(tiny_model_dir):
    with pytest.raises(ConfigError, match="needs the server's public image-text data"):
        load_config({"method": "fedpft-proxy", "model.name-or-path": tiny_model_dir})
    with pytest.raises(ConfigError, match=r"lora.target-modules \['dense'\] are not among"):
        load_config({"method": "fedpft-proxy", "lora.target-modules": "query,dense"})
    with pytest.raises(ConfigError, match="does not combine with privacy.mode='central-fixed'"):
        load_config({"method": "fedpft-proxy", "privacy.mode": "central-fixed", "strategy.weighting": "uniform"})
    assert load_config({"method": "fedpft-proxy"}).lora["target-modules"] == "query,key,value,attention.output.dense"


def test_two_fedpft_rounds_align_the_proxy_and_send_it_once_through_the_client_app_and_the_strategy(
        fedpft_run_config, task_identity, tmp_path):
    cfg = load_config(fedpft_run_config)
    strategy, initial = strategy_and_initial(fedpft_run_config, num_rounds=2, num_nodes=2)
    proxy_backbone, proxy = proxy_backbone_for(cfg, device="cpu")
    info = proxy_info(proxy)
    strategy.use_proxy_rounds(proxy_rounds_for(cfg, load_backbone_for(cfg, device="cpu"), proxy_backbone, proxy,
                                               initial, info))
    sent_layers = []

    def on_train(server_round, train, replies):
        sent_layers.append([PROXY_RECORD in m.content.array_records for m in train])
        assert [int(r.content["metrics"][VERSION]) for r in replies] == [server_round - 1] * 2

    _, contexts = run_rounds(strategy, fedpft_run_config, initial, [5, 6], 2, on_train)
    assert sent_layers == [[False, False], [True, True]]  # the aligned layers go out once, to each node
    assert strategy.proxy_rounds.version == 1 and len(info["alignments"]) == 1  # none after the last round
    layer_bytes = ArrayRecord(strategy.proxy_rounds.tensors).count_bytes()
    assert layer_bytes > sum(t.numel() * 4 for t in strategy.proxy_rounds.tensors.values())
    first, second = strategy.history  # round 2 also sends its aggregate to be evaluated
    assert second.bytes_down == 2 * first.bytes_down + 2 * layer_bytes
    assert all(f == [] for f in (first.failures, second.failures))
    assert {PROXY, "shared"} <= set(second.eval) and 0 <= second.eval[PROXY]["mean"] <= 1
    state = contexts[5].state
    assert int(state["feddat.meta"]["proxy-version"]) == 1 and "feddat.proxy" in state
    local = state["feddat.local-adapter"].to_torch_state_dict()
    assert all(torch.equal(local[k], v) for k, v in initial.items())  # only the shared LoRA trains

    proxy_state, proxy_layers = strategy.proxy_rounds.state()
    Checkpoint("k", 2, initial, None, 0.0, (3, (1, 2), None), {}, proxy_state, proxy_layers).save(tmp_path)
    restored = Checkpoint.load(tmp_path)
    assert restored.proxy == {"version": 1, "acked": {"5": 1, "6": 1}}
    assert all(torch.equal(restored.proxy_tensors[k], v) for k, v in proxy_layers.items())
