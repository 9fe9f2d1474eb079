"""The two FedDAT schedules against straightforward implementations of their definitions."""

import dataclasses

import pytest
import torch

from feddat_flwr.data.client_data import DataSpec, load_client_data
from feddat_flwr.data.loader import make_loader
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.model.head import new_head
from feddat_flwr.training.loop import TrainSettings, make_optimizer
from feddat_flwr.training.losses import mkd_loss
from feddat_flwr.training.steps import fast_step, reference_step

ADAPTERS = ("shared", "local", "teacher")


@pytest.fixture
def setup(tiny_cfg):
    """Random non-zero adapters on the process-wide backbone, restored afterwards."""
    cfg = tiny_cfg()
    backbone = load_backbone_for(cfg)
    data = load_client_data(DataSpec.from_config(cfg, 1, 3), backbone.processor)
    saved = {a: backbone.adapter_state(a) for a in ADAPTERS}
    torch.manual_seed(3)
    for name in ADAPTERS:
        backbone.load_adapter(name, {k: torch.randn_like(v) * 0.05 for k, v in saved[name].items()})
    head = new_head(backbone.hidden_size, len(data.labels), seed=0)
    batch = next(iter(make_loader(data.train, data.collator, 16, shuffle=False)))
    yield cfg, backbone, head, batch
    for name, state in saved.items():
        backbone.load_adapter(name, state)
    for p in backbone.model.parameters():
        p.grad = None


def _settings(cfg, schedule):
    return dataclasses.replace(TrainSettings.from_config(cfg, 0.01), schedule=schedule)


def _kd(s):
    return dict(temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)


def _set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g


def _compare_with_step(step, backbone, head, batch, s, start, head_start, expected, expected_head):
    backbone.load_adapter("shared", start["shared"])
    backbone.load_adapter("local", start["local"])
    head.load_state_dict(head_start)
    step(backbone, head, make_optimizer(backbone, head, s), batch, s)
    for name in ("shared", "local"):
        got = backbone.adapter_state(name)
        # Adam's first step is ~lr*sign(g): allow float summation-order noise of lr/1000.
        assert all(torch.allclose(got[k], expected[name][k], atol=s.lr * 1e-3, rtol=0) for k in got), name
        assert any(not torch.equal(got[k], start[name][k]) for k in got), f"{name} did not move"
    assert all(torch.allclose(head.state_dict()[k], expected_head[k], atol=s.lr * 1e-3, rtol=0)
               for k in expected_head)
    teacher = backbone.adapter_state("teacher")
    assert all(torch.equal(teacher[k], start["teacher"][k]) for k in teacher)


def _begin(cfg, backbone, head, schedule):
    """The settings, the starting values to compare from, and the parameters the definition updates."""
    start = {a: backbone.adapter_state(a) for a in ADAPTERS}, {k: v.clone() for k, v in head.state_dict().items()}
    params = backbone.parameters_of("shared"), backbone.parameters_of("local"), list(head.parameters())
    return _settings(cfg, schedule), start, params


def _expected(backbone, head):
    return ({"shared": backbone.adapter_state("shared"), "local": backbone.adapter_state("local")},
            {k: v.clone() for k, v in head.state_dict().items()})


def test_fast_step_equals_its_definition(setup):
    cfg, backbone, head, batch = setup
    s, (start, head_start), (shared, local, head_params) = _begin(cfg, backbone, head, "fast")
    # Definition: z_s = Student(x), z_D = DAT(x) (one forward each, same starting weights);
    # g_shared = dL_s/dshared with z_D detached; g_local = dL_D/dlocal with z_s detached;
    # g_head = dL_s/dhead + dL_D/dhead; then one AdamW step with these gradients.
    backbone.set_configuration("shared", s.lam, trainable=("shared", "local"))
    z_s = head(backbone.encode(backbone.embed(batch)))
    backbone.set_configuration("dat", s.lam, trainable=("shared", "local"))
    z_d = head(backbone.encode(backbone.embed(batch)))
    l_s = mkd_loss(z_s, batch["targets"], z_d.detach(), **_kd(s)).total
    l_d = mkd_loss(z_d, batch["targets"], z_s.detach(), **_kd(s)).total
    g_s = torch.autograd.grad(l_s, shared + head_params, retain_graph=True)
    g_d = torch.autograd.grad(l_d, local + head_params)
    optimizer = torch.optim.AdamW(shared + local + head_params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    _set_grads(shared, g_s[: len(shared)])
    _set_grads(local, g_d[: len(local)])
    _set_grads(head_params, [a + b for a, b in zip(g_s[len(shared):], g_d[len(local):])])
    optimizer.step()
    expected, expected_head = _expected(backbone, head)
    _compare_with_step(fast_step, backbone, head, batch, s, start, head_start, expected, expected_head)


def test_reference_step_equals_its_definition(setup):
    cfg, backbone, head, batch = setup
    s, (start, head_start), (shared, local, head_params) = _begin(cfg, backbone, head, "reference")
    # Definition (the authors' order): z_D0 = DAT(x) without gradients; student step: AdamW on
    # dL_s/d(shared, head) with L_s = MKD(z_s; z_D0); DAT step: with the updated head,
    # z_D = DAT(x), AdamW on dL_D/d(local, head) with L_D = MKD(z_D; z_s detached).
    optimizer = torch.optim.AdamW(shared + local + head_params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    with torch.no_grad():
        backbone.set_configuration("dat", s.lam)
        z_d0 = head(backbone.encode(backbone.embed(batch)))
    backbone.set_configuration("shared", s.lam, trainable=("shared", "local"))
    z_s = head(backbone.encode(backbone.embed(batch)))
    l_s = mkd_loss(z_s, batch["targets"], z_d0, **_kd(s)).total
    g_s = torch.autograd.grad(l_s, shared + head_params)
    _set_grads(shared, g_s[: len(shared)])
    _set_grads(head_params, g_s[len(shared):])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    backbone.set_configuration("dat", s.lam, trainable=("shared", "local"))
    z_d = head(backbone.encode(backbone.embed(batch)))
    l_d = mkd_loss(z_d, batch["targets"], z_s.detach(), **_kd(s)).total
    g_d = torch.autograd.grad(l_d, local + head_params)
    _set_grads(local, g_d[: len(local)])
    _set_grads(head_params, g_d[len(local):])
    optimizer.step()
    expected, expected_head = _expected(backbone, head)
    _compare_with_step(reference_step, backbone, head, batch, s, start, head_start, expected, expected_head)


def test_student_loss_does_not_reach_local_and_dat_loss_does_not_reach_shared(setup):
    cfg, backbone, head, batch = setup
    lam = cfg.feddat["lambda"]
    backbone.set_configuration("shared", lam, trainable=("shared", "local"))
    head(backbone.encode(backbone.embed(batch))).sum().backward()
    assert all(p.grad is None for p in backbone.parameters_of("local"))
    assert all(p.grad is not None for p in backbone.parameters_of("shared"))
    for p in backbone.parameters_of("shared"):
        p.grad = None
    backbone.set_configuration("dat", lam, trainable=("shared", "local"))
    head(backbone.encode(backbone.embed(batch))).sum().backward()
    assert all(p.grad is None for p in backbone.parameters_of("shared"))
    assert all(p.grad is not None for p in backbone.parameters_of("local"))
    assert all(p.grad is None for p in backbone.parameters_of("teacher"))
