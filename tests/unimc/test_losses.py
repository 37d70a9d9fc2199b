"""UniMC's losses on toy numbers against hand-computed values (TP=1, in-process)."""
import math

import pytest
import torch

from megatron_vega.unimc.layout import NOT_LABELLED
from megatron_vega.unimc.losses import mlm_loss, op_loss, option_scores, per_option, vocab_columns


def test_op_and_mlm_losses_equal_hand_computed_values(single_process):
    # Two rows: options at indices (1, 3, 5) of row 0 (gold: the second) and (1, 2) of row 1 (unlabelled).
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0], [0.0, 0.5, 0.0, 3.0],
                           [1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    omask = torch.tensor([[0, 1], [0, 3], [0, 5], [1, 1], [1, 2]])
    yes = vocab_columns(logits, [1])[:, 0]
    assert yes.tolist() == [1.0, 2.0, 0.5, -1.0, 0.0]
    scores = option_scores(yes, omask, (2, 6))
    assert scores[0, 0] == -10000.0 and scores[0, 3] == 2.0
    op = op_loss(scores, torch.tensor([3, NOT_LABELLED]))
    hand_op = -math.log(math.exp(2) / (math.exp(1) + math.exp(2) + math.exp(0.5)))
    assert op.item() == pytest.approx(hand_op, rel=1e-6)
    assert [s.tolist() for s in per_option(scores, omask)] == [[1.0, 2.0, 0.5], [-1.0, 0.0]]
    # yes = 1, no = 2: the O-MLM targets of row 0 (no, yes, no)
    rows = [(logits[0], 2), (logits[1], 1), (logits[2], 2)]
    hand = sum(math.log(sum(math.exp(v) for v in z.tolist())) - z[t].item() for z, t in rows) / 3
    mlm = mlm_loss(logits[:3].clone(), torch.tensor([2, 1, 2]))  # megatron-core's CE shifts its input in place
    assert mlm.item() == pytest.approx(hand, rel=1e-6)
    (op + mlm).backward()
    assert logits.grad[:3, 1].abs().min() > 0 and logits.grad[3:].abs().sum() == 0  # the unlabelled row: none
