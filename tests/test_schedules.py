"""The fast MKD schedule against a straightforward implementation of its definition."""

import torch

from feddat_flwr.client import DataSpec, load_client_data
from feddat_flwr.data.encode import iterate_batches
from feddat_flwr.losses import mkd_loss
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.model.head import new_head
from feddat_flwr.train import TrainSettings, fast_step, make_optimizer


def _setup(tiny_cfg):
    cfg = tiny_cfg()
    backbone = load_backbone_for(cfg)
    data = load_client_data(DataSpec.from_config(cfg, 1, 3), backbone)
    torch.manual_seed(3)
    for name in ("shared", "local", "teacher"):
        backbone.load_adapter(name, {k: torch.randn_like(v) * 0.05 for k, v in backbone.adapter_state(name).items()})
    for p in backbone.model.parameters():
        p.grad = None
    head = new_head(backbone.hidden_size, len(data.labels), seed=0)
    batch = next(iterate_batches(data.train, 16, shuffle=False))
    return backbone, head, batch


def test_fast_step_equals_its_definition(tiny_cfg):
    backbone, head, batch = _setup(tiny_cfg)
    s = TrainSettings(lr=0.01, schedule="fast")
    kd = dict(temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)
    start = {a: backbone.adapter_state(a) for a in ("shared", "local", "teacher")}
    head_start = {k: v.clone() for k, v in head.state_dict().items()}

    # Definition: z_s = Student(x), z_D = DAT(x) (one forward each, same starting weights);
    # g_shared = dL_s/dshared with z_D detached; g_local = dL_D/dlocal with z_s detached;
    # g_head = dL_s/dhead + dL_D/dhead; then one AdamW step with these gradients.
    shared, local, head_params = (backbone.parameters_of("shared"), backbone.parameters_of("local"),
                                  list(head.parameters()))
    backbone.set_mode("student", s.lam, trainable=("shared", "local"))
    z_s = head(backbone.encode(backbone.embed(batch)))
    backbone.set_mode("dat", s.lam, trainable=("shared", "local"))
    z_d = head(backbone.encode(backbone.embed(batch)))
    l_s = mkd_loss(z_s, batch["labels"], z_d.detach(), **kd).total
    l_d = mkd_loss(z_d, batch["labels"], z_s.detach(), **kd).total
    g_s = torch.autograd.grad(l_s, shared + head_params, retain_graph=True)
    g_d = torch.autograd.grad(l_d, local + head_params)
    reference = torch.optim.AdamW(shared + local + head_params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    for p, g in zip(shared, g_s[: len(shared)]):
        p.grad = g
    for p, g in zip(local, g_d[: len(local)]):
        p.grad = g
    for p, a, b in zip(head_params, g_s[len(shared):], g_d[len(local):]):
        p.grad = a + b
    reference.step()
    expected = {"shared": backbone.adapter_state("shared"), "local": backbone.adapter_state("local")}
    expected_head = {k: v.clone() for k, v in head.state_dict().items()}

    # The same from the same start through fast_step.
    backbone.load_adapter("shared", start["shared"])
    backbone.load_adapter("local", start["local"])
    head.load_state_dict(head_start)
    fast_step(backbone, head, make_optimizer(backbone, head, s), batch, s)
    for name in ("shared", "local"):
        got = backbone.adapter_state(name)
        # Adam's first step is ~lr*sign(g): allow float summation-order noise of lr/1000.
        assert all(torch.allclose(got[k], expected[name][k], atol=s.lr * 1e-3, rtol=0) for k in got), name
        assert any(not torch.equal(got[k], start[name][k]) for k in got), f"{name} did not move"
    assert all(torch.allclose(head.state_dict()[k], expected_head[k], atol=s.lr * 1e-3, rtol=0)
               for k in expected_head)
    teacher = backbone.adapter_state("teacher")
    assert all(torch.equal(teacher[k], start["teacher"][k]) for k in teacher)


def test_student_loss_does_not_reach_local_and_dat_loss_does_not_reach_shared(tiny_cfg):
    backbone, head, batch = _setup(tiny_cfg)
    s = TrainSettings(lr=0.01)
    backbone.set_mode("student", s.lam, trainable=("shared", "local"))
    z_s = head(backbone.encode(backbone.embed(batch)))
    z_s.sum().backward()
    assert all(p.grad is None for p in backbone.parameters_of("local"))
    assert all(p.grad is not None for p in backbone.parameters_of("shared"))
    for p in backbone.parameters_of("shared"):
        p.grad = None
    backbone.set_mode("dat", s.lam, trainable=("shared", "local"))
    head(backbone.encode(backbone.embed(batch))).sum().backward()
    assert all(p.grad is None for p in backbone.parameters_of("shared"))
    assert all(p.grad is not None for p in backbone.parameters_of("local"))
    assert all(p.grad is None for p in backbone.parameters_of("teacher"))
    for p in backbone.parameters_of("local"):
        p.grad = None
