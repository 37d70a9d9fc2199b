"""The chunked vocab-parallel soft-target CE equals a fully materialized one, at TP=1 and TP=2 (two gloo processes)."""
import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_vega import runtime
from megatron_vega.model.heads import PADDED_VOCAB_LOGIT
from megatron_vega.ops.smoothed_cross_entropy import smoothed_vocab_parallel_cross_entropy
from tests.distributed import spawn

VOCAB, PADDED = 50, 56  # real vocabulary, padded to a multiple of 2 * 4 as the model does
ROWS, CHUNK = 37, 8     # chunks smaller than n, and n not a multiple of the chunk
ALPHAS = (0.0, 0.1, 0.5, 1.0)


def naive_smoothed_cross_entropy(z, y, target, alpha, ignore_index=-100, vocab_size=None):
    """Reference: full-vocabulary logits [n, V] -> per-token −Σ ỹ log softmax(z), ỹ materialized in fp32.
    y None: ỹ smooths with the uniform distribution over the first vocab_size ids."""
    logp = torch.log_softmax(z.float(), dim=-1)
    with torch.no_grad():
        if y is None:
            soft = torch.zeros_like(logp)
            soft[:, :vocab_size] = alpha / vocab_size
        else:
            soft = torch.softmax(y.float(), dim=-1).mul_(alpha)
        valid = target != ignore_index
        rows = torch.nonzero(valid).squeeze(1)
        soft[rows, target[rows]] += 1.0 - alpha
        soft[~valid] = 0.0
    return -(soft * logp).sum(-1)


def make_inputs(seed=0):
    """Full padded logits (student, reference), targets with ignored positions, per-token upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(ROWS, PADDED, generator=g) * 3
    y = z + torch.randn(ROWS, PADDED, generator=g)  # a reference that mostly agrees with the student
    z[:, VOCAB:] = PADDED_VOCAB_LOGIT
    y[:, VOCAB:] = PADDED_VOCAB_LOGIT
    target = torch.randint(0, VOCAB, (ROWS,), generator=g)
    target[::5] = -100
    weight = torch.rand(ROWS, generator=g)
    return z, y, target, weight


def loss_and_grad(fn, z, *args, weight, **kwargs):
    z = z.detach().clone().requires_grad_()
    loss = fn(z, *args, **kwargs)
    (loss * weight).sum().backward()
    return loss.detach(), z.grad


def check_against_naive(shard, tp, rank):
    """Fused on this rank's shard (gradients gathered over TP) vs naive on the full vocabulary, all α, both modes."""
    z, y, target, weight = make_inputs()
    for alpha in ALPHAS:
        for ref in (y, None):
            want_loss, want_grad = loss_and_grad(naive_smoothed_cross_entropy, z, ref, target, alpha,
                                                 vocab_size=VOCAB, weight=weight)
            loss, grad = loss_and_grad(smoothed_vocab_parallel_cross_entropy, shard(z),
                                       None if ref is None else shard(ref), target, alpha, chunk_size=CHUNK,
                                       vocab_size=VOCAB, weight=weight)
            if tp > 1:
                parts = [torch.empty_like(grad) for _ in range(tp)]
                dist.all_gather(parts, grad, group=parallel_state.get_tensor_model_parallel_group())
                grad = torch.cat(parts, dim=-1)
            what = f"rank {rank} alpha {alpha} {'reference' if ref is not None else 'uniform'}"
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), what
            assert torch.allclose(loss, want_loss, atol=1e-5, rtol=0), what
            assert torch.allclose(grad, want_grad, atol=1e-5, rtol=0), what
            assert (loss[target == -100] == 0).all() and (grad[target == -100] == 0).all(), what
            assert (grad[:, VOCAB:] == 0).all(), what  # padded vocabulary entries get no gradient


def check_alpha_zero_is_megatron(shard):
    z, y, target, weight = make_inputs(seed=1)
    target[target == -100] = 3  # megatron-core has no ignore_index
    # megatron-core subtracts the max from fp32 logits in place: give it its own copy.
    want_loss, want_grad = loss_and_grad(lambda x, t: vocab_parallel_cross_entropy(x.clone(), t), shard(z), target,
                                         weight=weight)
    loss, grad = loss_and_grad(smoothed_vocab_parallel_cross_entropy, shard(z), shard(y), target, 0.0,
                               chunk_size=CHUNK, weight=weight)
    assert torch.allclose(loss, want_loss, atol=1e-6, rtol=0)
    assert torch.allclose(grad, want_grad, atol=1e-6, rtol=0)


def test_tp1_matches_naive(single_process):
    check_against_naive(lambda x: x, tp=1, rank=0)


def test_tp1_alpha_zero_matches_megatron(single_process):
    check_alpha_zero_is_megatron(lambda x: x)


def test_chunking_and_no_grad_do_not_change_the_loss(single_process):
    z, y, target, _ = make_inputs(seed=2)
    losses = [smoothed_vocab_parallel_cross_entropy(z, y, target, 0.5, chunk_size=c) for c in (1, CHUNK, None)]
    assert all(torch.equal(losses[0], x) for x in losses[1:])
    zg = z.clone().requires_grad_()
    assert torch.equal(smoothed_vocab_parallel_cross_entropy(zg, y, target, 0.5).detach(), losses[0])


def test_leading_dims_and_fp16_padding(single_process):
    z, y, target, _ = make_inputs(seed=3)
    flat = smoothed_vocab_parallel_cross_entropy(z, y, target, 0.5)
    nested = smoothed_vocab_parallel_cross_entropy(z[:36].view(4, 9, -1), y[:36].view(4, 9, -1),
                                                   target[:36].view(4, 9), 0.5)
    assert torch.equal(nested.flatten(), flat[:36])
    # −1e30 is −inf in fp16: the reference term must still be finite (0 · −inf would be NaN).
    half = smoothed_vocab_parallel_cross_entropy(z.half(), y.half(), target, 0.5)
    assert torch.isfinite(half).all() and torch.allclose(half, flat, atol=2e-2, rtol=1e-2)


def test_bf16_is_finite_and_close_to_fp32(single_process):
    z, y, target, weight = make_inputs(seed=4)
    z16, y16 = z.bfloat16(), y.bfloat16()
    for ref16, ref32 in ((y16, y16.float()), (None, None)):
        loss16, grad16 = loss_and_grad(smoothed_vocab_parallel_cross_entropy, z16, ref16, target, 0.5,
                                       chunk_size=CHUNK, vocab_size=VOCAB, weight=weight)
        loss32, grad32 = loss_and_grad(smoothed_vocab_parallel_cross_entropy, z16.float(), ref32, target, 0.5,
                                       chunk_size=CHUNK, vocab_size=VOCAB, weight=weight)
        assert loss16.dtype == torch.float32 and grad16.dtype == torch.bfloat16
        assert torch.isfinite(loss16).all() and torch.isfinite(grad16).all()
        assert torch.allclose(loss16, loss32, atol=1e-5, rtol=0)  # same inputs, fp32 math either way
        assert torch.allclose(grad16.float(), grad32, atol=4e-3, rtol=1e-2)  # one bf16 rounding of the grad


def test_bad_arguments(single_process):
    z, y, target, _ = make_inputs()
    with pytest.raises(ValueError, match="alpha"):
        smoothed_vocab_parallel_cross_entropy(z, y, target, 1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        smoothed_vocab_parallel_cross_entropy(z, None, target, 0.1)
    with pytest.raises(ValueError, match="reference"):
        smoothed_vocab_parallel_cross_entropy(z, y[:, :10], target, 0.1)


def _tp2_worker(rank, world):
    runtime.init_model_parallel(2, 1)
    width = PADDED // world

    def shard(x):  # rank 1's shard holds the padding
        return x[:, rank * width:(rank + 1) * width]
    check_against_naive(shard, tp=world, rank=rank)
    check_alpha_zero_is_megatron(shard)
    from tests.ops.test_fused_linear_cross_entropy import compare  # the fused linear + CE op, in the same launch
    compare(world, rank)


@pytest.mark.slow
def test_tp2_matches_naive_full_vocabulary():
    spawn(_tp2_worker, 2)
