"""PANDA's student loss (docs/prompt_tuning_and_panda.md): ground truth plus knowledge distilled from a
target-like teacher.

    L = CE(z_s, y) + c * lambda * KD(z_s, z_t)          (weighted, the released code: c = 0.1, lambda = --beta)
    L = (1 - lambda) * CE(z_s, y) + lambda * KD(z_s, z_t)   (interpolated, an unverified reading of the paper)

KD is ``mse`` = mean((z_s - z_t)^2) / B on raw logits, exactly the released code's F.mse_loss(...) / batch size,
or ``kl`` = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over rows. The teacher's logits are
constants (computed without gradients).
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from megatron_vega.errors import VegaInputError

DEFAULT_LAMBDA = 0.1  # the released code's --beta


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    teacher = teacher.detach().float()
    student = student.float()
    if kind == "mse":
        return F.mse_loss(student, teacher) / student.shape[0]
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def panda_loss(student, teacher, labels, cfg, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, CE, KD) for a PandaConfig ``cfg`` and balancing factor ``lam``."""
    ce = F.cross_entropy(student.float(), labels)
    kd = kd_loss(student, teacher, cfg.panda_kd, cfg.panda_temperature)
    if cfg.panda_loss_form == "weighted":
        return ce + cfg.panda_c * lam * kd, ce, kd
    return (1.0 - lam) * ce + lam * kd, ce, kd


def balancing_factor(cfg, source: str | None, target: str) -> tuple[float, str]:
    """lambda and where it came from: --panda-lambda, else the metric's T(source -> target) clipped to [0, 1],
    else the released code's default."""
    if cfg.panda_lambda is not None:
        return cfg.panda_lambda, "--panda-lambda"
    if not cfg.panda_transferability:
        return DEFAULT_LAMBDA, "default (the released code's beta)"
    path = cfg.panda_transferability
    try:
        matrix = json.loads(Path(path).read_text())["matrix"]
    except (OSError, ValueError, KeyError, TypeError):
        raise VegaInputError(path, "not a transferability JSON (tools/prompt_transferability.py --json)") from None
    if source is None or target not in matrix.get(source, {}):
        raise VegaInputError(path, f"holds no entry for source {source} -> target {target}")
    return min(max(float(matrix[source][target]), 0.0), 1.0), f"T({source} -> {target}) from {path}"
