"""``--fused-loss``: MLM and self-evolution losses computed from the MLM head's features by the fused projection +
soft-target cross entropy (ops/fused_linear_cross_entropy.py, docs/triton.md), so that no logits of all masked
tokens exist — the student's nor, in self-evolution, the reference's (whose pass keeps its features [n, H]).

``auto`` turns it on where the logits are what costs memory: a vocabulary of at least FUSED_LOSS_MIN_VOCAB ids
(DeBERTa-v2/v3's 128100; tiny test vocabularies keep the logits path). It equals the logits path (losses and
gradients, fp32 to rounding: tests/ops/test_fused_linear_cross_entropy.py) and is no slower on the CPU measured in
BENCHMARKS.md; its one cost is the output weight's gradient [V/tp, H] held from the loss's forward to its backward
(the last pipeline stage runs the two back to back)."""
import torch

from megatron_vega.model.heads import LMFeatures
from megatron_vega.ops.fused_linear_cross_entropy import fused_linear_soft_target_cross_entropy

FUSED_LOSS_CHOICES = ("auto", "on", "off")
FUSED_LOSS_MIN_VOCAB = 32768


def fused_loss_enabled(setting: str, vocab_size: int) -> bool:
    return setting == "on" or (setting == "auto" and vocab_size >= FUSED_LOSS_MIN_VOCAB)


def emit_features(chunks) -> None:
    """Make the MLM head of these model chunks (the last stage's) return LMFeatures instead of logits."""
    for chunk in chunks:
        head = getattr(chunk, "lm_head", None)
        if head is not None:
            head.emit_features = True


def fused_soft_target_loss(features: LMFeatures, reference: torch.Tensor | None, target: torch.Tensor,
                           alpha: float, count):
    """(Σ_i loss_i / count, mean NLL of the gold tokens) for ỹ = (1−α)·onehot + α·r, r = softmax of the reference
    features' logits (None: uniform; α = 0: plain MLM)."""
    weights = torch.full(target.shape, 1.0 / max(float(count), 1.0), device=target.device)
    out = fused_linear_soft_target_cross_entropy(features.hidden, reference, features.weight, features.bias,
                                                 target, alpha, features.vocab_size, token_weights=weights)
    return out.loss, out.token_nll.mean()
