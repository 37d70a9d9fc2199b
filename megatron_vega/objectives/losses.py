"""Losses shared by objectives, on the vocab-parallel logits of the MLM head."""
import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_vega.model.heads import LMFeatures
from megatron_vega.objectives.fused_loss import fused_soft_target_loss


def predicted_labels(batch) -> torch.Tensor:
    """Gold ids at the predicted positions (flat, sequence-major like the model's output)."""
    return batch["labels"].t().reshape(-1).index_select(0, batch["lm_positions"])


def mlm_loss(batch, logits):
    """Mean cross-entropy over the predicted positions of the micro-batch (vocab-parallel, no full-vocab gather);
    from the head's LMFeatures by the fused projection + loss under --fused-loss (objectives/fused_loss.py)."""
    if isinstance(logits, LMFeatures):
        target = predicted_labels(batch)
        loss, _ = fused_soft_target_loss(logits, None, target, 0.0, target.numel())
        return loss, {"lm loss": loss.detach().clone()}
    losses = vocab_parallel_cross_entropy(logits, predicted_labels(batch))
    loss = losses.sum() / max(losses.numel(), 1)
    # clone: megatron-core divides the returned loss in place by the number of micro-batches
    return loss, {"lm loss": loss.detach().clone()}
