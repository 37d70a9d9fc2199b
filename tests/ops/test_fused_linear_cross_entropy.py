"""The fused projection + soft-target CE (weighted sum of per-token losses, gradients formed in the forward) equals
the head's projection followed by the logits op
(ops/smoothed_cross_entropy.py): losses and the gradients of the hidden states, output weight and bias, at TP=1
and TP=2 (in the logits op's two-process launch), with padded vocabulary, ignored tokens, chunks that divide
nothing."""
import pytest
import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from megatron_vega.model.heads import PADDED_VOCAB_LOGIT
from megatron_vega.ops.fused_linear_cross_entropy import fused_linear_soft_target_cross_entropy
from megatron_vega.ops.smoothed_cross_entropy import smoothed_vocab_parallel_cross_entropy

VOCAB, PADDED, HIDDEN, ROWS = 50, 56, 16, 23
CASES = ((0.0, False), (0.3, False), (1.0, False), (0.3, True))  # (alpha, uniform smoothing)


def inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(ROWS, HIDDEN, generator=gen)
    ref_hidden = hidden + 0.5 * torch.randn(ROWS, HIDDEN, generator=gen)
    weight, bias = torch.randn(PADDED, HIDDEN, generator=gen) * 0.3, torch.randn(PADDED, generator=gen) * 0.1
    target = torch.randint(0, VOCAB, (ROWS,), generator=gen)
    target[[2, 11]] = -100
    upstream = torch.rand(ROWS, generator=gen)
    return [x.to(dtype) for x in (hidden, ref_hidden, weight, bias)] + [target, upstream]


def compare(tp: int, rank: int, chunk_ops=None, dtype=torch.float32, atol=1e-5):
    """Both paths on this rank's vocabulary shard; returns the largest difference seen."""
    hidden, ref_hidden, weight, bias, target, upstream = inputs(dtype)
    width = PADDED // tp
    weight, bias = weight[rank * width:(rank + 1) * width], bias[rank * width:(rank + 1) * width]
    pad = torch.where(torch.arange(rank * width, (rank + 1) * width) < VOCAB, 0.0, PADDED_VOCAB_LOGIT)
    worst = 0.0
    for alpha, uniform in CASES:
        results = []
        for fused in (False, True):
            leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
            h, w, b = leaves
            h_in = copy_to_tensor_model_parallel_region(h)  # as the head: its backward all-reduces dH over TP
            ref = None if uniform else ref_hidden
            if fused:
                out = fused_linear_soft_target_cross_entropy(h_in, ref, w, b, target, alpha, VOCAB,
                                                             token_weights=upstream, token_chunk=5, vocab_chunk=7,
                                                             chunk_ops=chunk_ops)
                loss, total = out.token_losses, out.loss
                if alpha == 0.0:  # the plain NLL it reports is the α = 0 loss
                    torch.testing.assert_close(out.token_nll, loss, rtol=0, atol=0)
            else:
                z = F.linear(h_in.float(), w.float(), b.float()) + pad
                y = None if ref is None else F.linear(ref.float(), w.float(), b.float()) + pad
                loss = smoothed_vocab_parallel_cross_entropy(z, y, target, alpha, vocab_size=VOCAB)
                total = (loss * upstream).sum()
            results.append([loss, *torch.autograd.grad(total, leaves)])
        for name, got, want in zip(("loss", "hidden", "weight", "bias"), results[1], results[0]):
            torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol, msg=f"{name} {alpha} {uniform}")
            worst = max(worst, (got.float() - want.float()).abs().max().item())
    assert results[1][0][2] == 0 and results[1][1][2].abs().sum() == 0  # ignored tokens: no loss, no gradient
    return worst


def test_tp1_equals_the_logits_op(single_process):
    compare(1, 0)


def test_bad_arguments(single_process):
    hidden, ref_hidden, weight, bias, target, _ = inputs()
    with pytest.raises(ValueError, match="alpha"):
        fused_linear_soft_target_cross_entropy(hidden, ref_hidden, weight, bias, target, 1.5, VOCAB)
    with pytest.raises(ValueError, match=r"\[n, H\]"):
        fused_linear_soft_target_cross_entropy(hidden, ref_hidden, weight, bias, target[:3], 0.1, VOCAB)


# TP=2: tests/ops/test_smoothed_cross_entropy.py's two-process launch also runs compare() (one launch for both ops)


def test_bf16_weight_in_fp32_blocks_and_no_grad(single_process):
    """A bf16 table (fp32 GEMMs on row blocks where bf16 is emulated), and a no-grad call (validation) that forms no
    gradients but the same losses."""
    compare(1, 0, dtype=torch.bfloat16, atol=2e-2)
    hidden, ref_hidden, weight, bias, target, _ = inputs()
    with_grad = fused_linear_soft_target_cross_entropy(hidden.requires_grad_(), ref_hidden, weight, bias, target,
                                                       0.3, VOCAB)
    with torch.no_grad():
        without = fused_linear_soft_target_cross_entropy(hidden, ref_hidden, weight, bias, target, 0.3, VOCAB)
    assert not without.loss.requires_grad
    torch.testing.assert_close(without.token_losses, with_grad.token_losses, rtol=0, atol=0)
    with_grad.loss.backward()
    with pytest.raises(RuntimeError, match="already used"):
        with_grad.loss.backward()
