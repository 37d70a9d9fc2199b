"""COCO-LM's loss terms (docs/coco_lm.md, "Losses"), each normalised per micro-batch as the criterion's effective
objective: mean over masked tokens, mean over non-padding tokens, mean over the 2B contrastive rows.

Inputs follow the model's layout: full-sequence tensors are [s, b]; predicted positions are the flat s-major
``lm_positions`` (n of them); vocabulary logits are this TP rank's fp32 shard [n, V/tp]. megatron-core's
vocab-parallel cross-entropy overwrites its logits in place, so every argmax or sample of a logits tensor is
taken before its loss.
"""
import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_vega.ops.vocab_parallel_sampling import vocab_parallel_argmax


def at_positions(full: torch.Tensor, lm_positions: torch.Tensor) -> torch.Tensor:
    """The values of an [s, b] tensor at the flat s-major predicted positions: [n]."""
    return full.reshape(-1).index_select(0, lm_positions)


def sequence_major(batch_tensor: torch.Tensor) -> torch.Tensor:
    """A batch's [b, s] tensor in the model's [s, b] layout."""
    return batch_tensor.t()


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator MLM: (mean cross-entropy over the n predicted tokens, [n] bool argmax == label).
    ``logits`` [n, V/tp] is consumed."""
    correct = vocab_parallel_argmax(logits.detach()) == labels
    losses = vocab_parallel_cross_entropy(logits, labels)
    return losses.sum() / max(losses.numel(), 1), correct


def copy_loss(copy_logits: torch.Tensor, replaced: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Binary copy loss: mean over non-padding tokens of BCE(σ(b_i), t_i), t_i = 1 where the token is original.
    copy_logits [s, b] fp32, replaced [s, b] bool, padding_mask [s, b] (1 = a real token)."""
    keep = padding_mask.bool()
    target = (~replaced).float()
    losses = F.binary_cross_entropy_with_logits(copy_logits.float(), target, reduction="none")
    return losses[keep].sum() / keep.sum().clamp(min=1)


def corrective_lm_loss(clm_logits: torch.Tensor, labels: torch.Tensor, copy_logits_at_masked: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrective LM: (1/n) Σ_i sg(1 − σ(b_i)) · CE(ℓ_i, x_i) over the n masked positions, the weight the detached
    probability that token i was replaced; and [n] bool argmax == label. ``clm_logits`` [n, V/tp] is consumed."""
    correct = vocab_parallel_argmax(clm_logits.detach()) == labels
    weight = torch.sigmoid(-copy_logits_at_masked.detach().float())  # 1 − σ(b) = σ(−b)
    losses = vocab_parallel_cross_entropy(clm_logits, labels)
    return (weight * losses).sum() / max(losses.numel(), 1), correct


def sequence_contrastive_loss(crop: torch.Tensor, corrupted: torch.Tensor, temperature: float
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SCL over the micro-batch: rows interleaved [u_1; v_1; u_2; v_2; ...] (u the cropped original's, v the
    corrupted sequence's [CLS] projection, L2-normalised in fp32), similarities R Rᵀ / τ with the diagonal
    excluded, each row's positive its partner. Returns (mean over the 2B rows of the NLL, [2B] bool top-1 hit)."""
    rows = torch.stack([F.normalize(crop.float(), dim=-1), F.normalize(corrupted.float(), dim=-1)], dim=1)
    rows = rows.reshape(-1, crop.shape[-1])  # [2B, d], interleaved
    sim = rows @ rows.t() / temperature
    sim = sim.masked_fill(torch.eye(len(rows), dtype=torch.bool, device=sim.device), float("-inf"))
    target = torch.arange(len(rows), device=sim.device) ^ 1  # 2k <-> 2k+1
    return F.cross_entropy(sim, target), sim.detach().argmax(dim=-1) == target
