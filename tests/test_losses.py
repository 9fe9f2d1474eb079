import math

import pytest
import torch

from feddat_flwr.training.losses import kd_loss, mkd_loss


def _hand_kd(z, zt, T):
    """T^2 * mean_i sum_c q_ic (log q_ic - log p_ic), computed with plain Python floats."""
    total = 0.0
    for row, trow in zip(z.tolist(), zt.tolist()):
        p = [math.exp(v / T) for v in row]
        q = [math.exp(v / T) for v in trow]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        total += sum(qc * (math.log(qc) - math.log(pc)) for pc, qc in zip(p, q))
    return T * T * total / len(z)


def test_kd_matches_hand_computation():
    z = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert kd_loss(z, zt, 3.0).item() == pytest.approx(_hand_kd(z, zt, 3.0), rel=1e-5)
    assert kd_loss(z, z, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_does_not_backpropagate_into_teacher():
    z = torch.randn(4, 5, requires_grad=True)
    zt = torch.randn(4, 5, requires_grad=True)
    kd_loss(z, zt, 2.0).backward()
    assert z.grad is not None and zt.grad is None


def test_mkd_loss_weights_task_and_kd():
    z = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    ce = -(math.log(math.exp(2.0) / (math.exp(1) + math.exp(2) + math.exp(0.5)))
           + math.log(math.exp(3.0) / (1 + math.exp(-1) + math.exp(3)))) / 2
    parts = mkd_loss(z, y, zt, temperature=3.0, task_weight=0.5, kd_weight=0.5)
    assert parts.task.item() == pytest.approx(ce, rel=1e-5)
    assert parts.kd.item() == pytest.approx(_hand_kd(z, zt, 3.0), rel=1e-5)
    assert parts.total.item() == pytest.approx(0.5 * ce + 0.5 * _hand_kd(z, zt, 3.0), rel=1e-5)
    no_kd = mkd_loss(z, y, None, temperature=3.0, task_weight=1.0, kd_weight=0.5)
    assert no_kd.total.item() == pytest.approx(ce, rel=1e-5) and no_kd.kd.item() == 0.0
