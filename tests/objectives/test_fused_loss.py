"""--fused-loss in process: the self-evolution and MLM losses from the MLM head's features (fused projection +
soft-target CE) equal the logits path, loss and gradients of the head's input, its parameters and the tied output
weight (fp32, 1e-5), for the smoothing and normalisation variants; ``auto`` picks by vocabulary size."""
from dataclasses import replace

import pytest
import torch

from megatron_vega.config import model_preset
from megatron_vega.model.heads import LMFeatures, MLMHead
from megatron_vega.objectives.arguments import objective_config
from megatron_vega.objectives.fused_loss import fused_loss_enabled
from megatron_vega.objectives.losses import mlm_loss
from tests.training.helpers import tiny_run

SEQ, BATCH, VOCAB = 7, 3, 1003  # padded to 1008: five padding ids


class _Model:
    def __init__(self, weight):
        self.weight = weight

    def shared_embedding_or_output_weight(self):
        return self.weight


def _batch(gen):
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    padding = torch.ones(BATCH, SEQ, dtype=torch.long)
    padding[0, 5:] = 0
    positions = torch.tensor([0, 4, 5, 9, 13, 17, 20])  # flat s-major
    return {"labels": labels, "lm_positions": positions, "padding_mask": padding}


def _losses(head, weight, hidden, ref_hidden, batch, objective, fused: bool):
    """(loss, logs, grads of [hidden, head params..., weight]) with the head emitting features or logits."""
    head.emit_features = fused
    leaves = [hidden, *head.parameters(), weight]
    model = _Model(weight)
    if objective is None:
        loss, logs = mlm_loss(batch, head(hidden, model, batch["lm_positions"]))
    else:
        objective.references.clear()
        if not objective.cfg.se_uniform_smoothing:
            with torch.no_grad():
                objective._keep_reference(head(ref_hidden, model, batch["lm_positions"]))
        out = head(hidden, model, batch["lm_positions"])
        assert isinstance(out, LMFeatures) == fused
        loss, logs = objective._loss(batch, out)
    return loss, logs, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("variant", ["mlm", "se", "se_uniform", "se_all_tokens"])
def test_fused_loss_equals_the_logits_path(single_process, variant):
    from megatron_vega.objectives.self_evolution import SelfEvolution
    gen = torch.Generator().manual_seed(0)
    cfg = model_preset("tiny", vocab_size=VOCAB)
    torch.manual_seed(0)
    head = MLMHead(cfg, tp_size=1)
    torch.nn.init.normal_(head.bias, std=0.1, generator=gen)
    weight = (torch.randn(cfg.padded_vocab_size, cfg.hidden_size, generator=gen) * 0.2).requires_grad_()
    hidden = torch.randn(SEQ, BATCH, cfg.hidden_size, generator=gen).requires_grad_()
    ref_hidden = hidden.detach() + 0.5 * torch.randn(SEQ, BATCH, cfg.hidden_size, generator=gen)
    batch = _batch(gen)
    objective = None
    if variant != "mlm":
        settings = objective_config("self-evolution", neglected_tokens="unused", se_alpha=0.3, fused_loss="on",
                                    se_uniform_smoothing=variant == "se_uniform",
                                    se_normalization="all" if variant == "se_all_tokens" else "masked")
        objective = SelfEvolution(replace(tiny_run(), model=cfg, objective=settings))
    off = _losses(head, weight, hidden, ref_hidden, batch, objective, fused=False)
    on = _losses(head, weight, hidden, ref_hidden, batch, objective, fused=True)
    torch.testing.assert_close(on[0], off[0], rtol=1e-5, atol=1e-6)
    for name in off[1]:
        torch.testing.assert_close(on[1][name], off[1][name], rtol=1e-5, atol=1e-6, msg=name)
    for got, want in zip(on[2], off[2]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert on[2][-1][VOCAB:].abs().sum() == 0  # padded vocabulary rows: no gradient


def test_auto_takes_the_fused_loss_for_large_vocabularies():
    assert fused_loss_enabled("auto", 128100) and not fused_loss_enabled("auto", 1000)
    assert fused_loss_enabled("on", 1000) and not fused_loss_enabled("off", 128100)
