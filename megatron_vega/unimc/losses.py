"""UniMC's losses on the vocab-parallel MLM logits (docs/unimc_and_ppt.md, "Losses"), without a full-vocab gather.

* ``vocab_columns`` (the column gather): the logits of a few ids, exact on every tensor-parallel rank. Each rank
  fills the columns of the ids in its vocabulary slice, zeros elsewhere, and the sum over the group
  (``reduce_from_tensor_model_parallel_region``, whose backward is the identity) is the [n, K] logits; the
  gradient reaches the owner's shard only.
* OP (option prediction): s_k = z_{m_k}["yes"] at every O-MASK, placed in a [b, s] score that is -10000 everywhere
  else, then cross-entropy over the sequence with the gold O-MASK as the label: softmax over each row's options.
* MLM: vocab-parallel cross-entropy at every labelled position, O-MASK yes/no targets and masked text tokens
  averaged together (UniMC's code computes one MLM loss over the union). Total = OP + MLM.
"""
import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

from megatron_vega.unimc.layout import NOT_LABELLED

OFF_OPTION = -10000.0  # UniMC's score for every position that is not an O-MASK


def vocab_columns(local_logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """[n, V/tp] logits of this rank's vocabulary slice -> [n, len(ids)] logits of ``ids``, the same on every rank."""
    per_rank = local_logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * per_rank
    zeros = local_logits.new_zeros(len(local_logits))
    columns = [local_logits[:, i - start] if start <= i < start + per_rank else zeros for i in ids]
    return reduce_from_tensor_model_parallel_region(torch.stack(columns, dim=1))


def option_scores(yes_logits: torch.Tensor, omask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The [b, s] OP score: the "yes" logit at each O-MASK (``omask`` [n, 2] rows (row, index)), -10000 elsewhere."""
    scores = yes_logits.new_full(shape, OFF_OPTION)
    return scores.index_put((omask[:, 0], omask[:, 1]), yes_logits)


def op_loss(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Mean over the labelled rows of -log softmax_seq(scores)[gold O-MASK]."""
    return F.cross_entropy(scores, gold, ignore_index=NOT_LABELLED)


def mlm_loss(local_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean vocab-parallel cross-entropy over the labelled positions (0 when there is none). megatron-core's CE
    shifts ``local_logits`` in place: pass a tensor nothing else reads (the model's is a fresh index copy)."""
    if targets.numel() == 0:
        return local_logits.sum() * 0.0
    return vocab_parallel_cross_entropy(local_logits, targets).mean()


def per_option(scores: torch.Tensor, omask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's O-MASK scores, options in order."""
    values = scores[omask[:, 0], omask[:, 1]]
    counts = torch.bincount(omask[:, 0], minlength=scores.shape[0]).tolist()
    return list(values.split(counts))
