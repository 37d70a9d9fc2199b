"""The hand-written fp32 CPU attention core (ops/attention/cpu.py) against the plain formulation: c2p/p2c by
torch.gather on expanded indices, softmax, dropout, autograd doing the backward."""
import math

import pytest
import torch
import torch.nn.functional as F

from megatron_vega.model.relative_position import relative_index
from megatron_vega.ops.attention.cpu import CpuCore, _CpuAttention
from megatron_vega.ops.attention.sdpa import relative_bias
from megatron_vega.ops.dropout import dropout_grid

B, H, S, D, SPAN = 2, 3, 12, 4, 4  # S > SPAN / 2: the log-bucketed part of the index is exercised


def disentangled_attention(q, k, v, pos_key, pos_query, index, mask, dropout_p, scale, prefix=None, qkv=None):
    """The core as the model calls it (tables scaled by the model)."""
    scaled = lambda t: None if t is None else t * scale  # noqa: E731
    return CpuCore()(qkv, *(prefix or (None, None)), scaled(pos_key), scaled(pos_query), index, mask, dropout_p, scale)


def reference(q, k, v, pos_key, pos_query, index, mask, dropout_p, scale, prefix=None):
    bias = relative_bias(q, k, None if pos_key is None else pos_key * scale,
                         None if pos_query is None else pos_query * scale, index)
    if prefix is not None:
        k, v = torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2)
        bias = None if bias is None else F.pad(bias, (prefix[0].shape[2], 0))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    for term in (bias, mask):
        scores = scores if term is None else scores + term
    probs = F.dropout(torch.softmax(scores, -1), dropout_p, dropout_p > 0)
    return probs @ v


def inputs(dtype, prefix_len=0, c2p=True, p2c=True, masked=True):
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()  # noqa: E731
    fused = rand(S, B, H, 3, D)  # the module's layout: q, k, v are views of the fused projection
    pos_key = rand(H, 2 * SPAN, D) if c2p else None
    pos_query = rand(H, 2 * SPAN, D) if p2c else None
    prefix = (rand(B, H, prefix_len, D), rand(B, H, prefix_len, D)) if prefix_len else None
    mask = None
    if masked:
        keep = torch.ones(B, S, dtype=dtype)
        keep[1, S * 2 // 3:] = 0
        mask = (1 - keep[:, None, :, None] * keep[:, None, None, :]) * torch.finfo(dtype).min
        mask = F.pad(mask, (prefix_len, 0))
    index = relative_index(S, SPAN, 16, SPAN, "cpu")
    return fused, pos_key, pos_query, prefix, mask, index


@pytest.fixture(params=[(2, 1), (2, None), (3, 2)], ids=["inline", "pool", "pool-uneven-chunks"])
def chunking(request, monkeypatch):
    heads, workers = request.param
    monkeypatch.setattr(_CpuAttention, "CHUNK_HEADS", heads)
    monkeypatch.setattr(_CpuAttention, "WORKERS", workers)


@pytest.mark.parametrize("case", [{}, {"prefix_len": 2}, {"c2p": False}, {"p2c": False, "masked": False},
                                  {"c2p": False, "p2c": False, "prefix_len": 1}])
def test_matches_the_gather_formulation_in_float64(chunking, case):
    fused, pos_key, pos_query, prefix, mask, index = inputs(torch.float64, **case)
    leaves = [x for x in (fused, pos_key, pos_query, *(prefix or ())) if x is not None]
    scale = 1 / math.sqrt(3 * D)
    qkv = fused.permute(3, 1, 2, 0, 4)
    grad = torch.randn(B, H, S, D, dtype=torch.float64)
    ref = reference(qkv[0], qkv[1], qkv[2], pos_key, pos_query, index, mask, 0.0, scale, prefix)
    ref_grads = torch.autograd.grad(ref, leaves, grad)
    args = (qkv, *(prefix or (None, None)), *(None if t is None else t * scale for t in (pos_key, pos_query)))
    out = _CpuAttention.apply(*args, index, mask, 0.0, scale, True)
    grads = torch.autograd.grad(out, leaves, grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_gradcheck(chunking):
    fused, pos_key, pos_query, prefix, mask, index = inputs(torch.float64, prefix_len=2)
    scale = 1 / math.sqrt(3 * D)

    def f(fused, pos_key, pos_query, prefix_k, prefix_v):
        return _CpuAttention.apply(fused.permute(3, 1, 2, 0, 4), prefix_k, prefix_v, pos_key, pos_query, index,
                                   mask, 0.0, scale, True)
    assert torch.autograd.gradcheck(f, (fused, pos_key, pos_query, *prefix), fast_mode=True)


def test_fp32_dropout_equals_the_reference_with_the_same_mask(chunking):
    """The mask the CPU core drew (saved for its backward), applied in the plain formulation: same output and
    grads to fp32 rounding."""
    fused, pos_key, pos_query, prefix, mask, index = inputs(torch.float32, prefix_len=2)
    leaves = [fused, pos_key, pos_query, *prefix]
    scale, p = 1 / math.sqrt(3 * D), 0.3
    qkv = fused.permute(3, 1, 2, 0, 4)
    grad = torch.randn(B, H, S, D)
    torch.manual_seed(7)
    out = disentangled_attention(qkv[0], qkv[1], qkv[2], pos_key, pos_query, index, mask, p, scale, prefix, qkv=qkv)
    keep = torch.stack(out.grad_fn.saved_tensors[7 + B:]).float()  # saved: qkv, prefix k/v, tables, indices, probs
    assert 0 < keep.mean() < 1
    _, inv = dropout_grid(p)
    dropout = lambda probs, *_: probs * keep * inv  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F, "dropout", dropout)
        ref = reference(qkv[0], qkv[1], qkv[2], pos_key, pos_query, index, mask, p, scale, prefix)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for g, r in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


def test_dropout_mask_is_deterministic_and_independent_of_the_workers(monkeypatch):
    fused, pos_key, pos_query, prefix, mask, index = inputs(torch.float32)
    qkv = fused.permute(3, 1, 2, 0, 4)
    outs = []
    for workers in (1, 2, 2):
        monkeypatch.setattr(_CpuAttention, "WORKERS", workers)
        torch.manual_seed(11)
        outs.append(disentangled_attention(qkv[0], qkv[1], qkv[2], pos_key, pos_query, index, mask, 0.5, 0.3,
                                           qkv=qkv))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    torch.manual_seed(12)
    assert not torch.equal(outs[0], disentangled_attention(qkv[0], qkv[1], qkv[2], pos_key, pos_query, index, mask,
                                                           0.5, 0.3, qkv=qkv))


def test_no_grad_forward_equals_the_training_forward(chunking):
    fused, pos_key, pos_query, prefix, mask, index = inputs(torch.float32)
    qkv = fused.permute(3, 1, 2, 0, 4)
    args = (qkv[0], qkv[1], qkv[2], pos_key, pos_query, index, mask, 0.0, 0.3)
    with torch.no_grad():
        inference = disentangled_attention(*args, qkv=qkv)
    assert torch.equal(inference, disentangled_attention(*args, qkv=qkv))
