"""PANDA's loss against hand-computed values, and where its lambda comes from."""
import json
import math

import pytest
import torch

from megatron_vega.errors import VegaInputError
from megatron_vega.prompt.config import PandaConfig
from megatron_vega.prompt.panda import balancing_factor, panda_loss

STUDENT = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
TEACHER = torch.tensor([[2.0, 0.0, -2.0], [0.0, 1.0, 0.0]])
LABELS = torch.tensor([0, 1])


def _ce() -> float:
    row0 = -1.0 + math.log(math.e ** 1 + 1 + math.e ** -1)
    row1 = -0.5 + math.log(2 * math.e ** 0.5 + 1)
    return (row0 + row1) / 2


def test_mse_form_is_the_released_code():
    # mean((z_s - z_t)^2) / B: squared differences 1, 0, 1, 0.25, 0.25, 0 -> mean 2.5/6, / batch 2
    kd = 2.5 / 6 / 2
    loss, ce, got_kd = panda_loss(STUDENT, TEACHER, LABELS, PandaConfig(panda_kd="mse"), lam=0.1)
    assert got_kd.item() == pytest.approx(kd)
    assert ce.item() == pytest.approx(_ce())
    assert loss.item() == pytest.approx(_ce() + 0.1 * 0.1 * kd)


def test_kl_form_with_temperature():
    t = 2.0

    def softmax(row):
        e = [math.exp(x / t) for x in row]
        return [x / sum(e) for x in e]

    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(tr), softmax(sr)))
             for sr, tr in zip(STUDENT.tolist(), TEACHER.tolist())) / 2 * t * t
    cfg = PandaConfig(panda_kd="kl", panda_temperature=t, panda_c=1.0)
    loss, ce, got_kd = panda_loss(STUDENT, TEACHER, LABELS, cfg, lam=0.3)
    assert got_kd.item() == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(_ce() + 0.3 * kl, rel=1e-5)
    interpolated = PandaConfig(panda_kd="kl", panda_temperature=t, panda_loss_form="interpolated")
    expected = 0.7 * _ce() + 0.3 * kl
    assert panda_loss(STUDENT, TEACHER, LABELS, interpolated, lam=0.3)[0].item() == pytest.approx(expected, rel=1e-5)


def test_the_teacher_gets_no_gradient():
    student, teacher = STUDENT.clone().requires_grad_(), TEACHER.clone().requires_grad_()
    panda_loss(student, teacher, LABELS, PandaConfig(), lam=1.0)[0].backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_lambda_from_flag_metric_or_default(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"matrix": {"RTE": {"CB": 0.62}, "WSC": {"CB": 1.3}}}))
    assert balancing_factor(PandaConfig(panda_lambda=0.4, panda_transferability=str(path)), "RTE", "CB")[0] == 0.4
    assert balancing_factor(PandaConfig(panda_transferability=str(path)), "RTE", "CB")[0] == 0.62
    assert balancing_factor(PandaConfig(panda_transferability=str(path)), "WSC", "CB")[0] == 1.0  # clipped
    assert balancing_factor(PandaConfig(), "RTE", "CB")[0] == 0.1
    with pytest.raises(VegaInputError, match="no entry for source BoolQ"):
        balancing_factor(PandaConfig(panda_transferability=str(path)), "BoolQ", "CB")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(VegaInputError, match="not a transferability JSON"):
        balancing_factor(PandaConfig(panda_transferability=str(tmp_path / "bad.json")), "RTE", "CB")
