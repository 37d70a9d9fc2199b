"""The Triton core: flash-style disentangled attention, forward and backward, without any [s, s] tensor per head
(docs/triton.md). The kernels (ops/triton/attention_kernels.py) gather c2p and p2c from the [s, 2k] tables
Q Kr^T and K Qr^T inside the tile loop; the additive mask [b, 1, s, t] and the bucket index [s, s] or [b, s, s]
are read tile by tile (shared by the heads). Dropout is regenerated in the backward from one seed drawn from the
current generator (inside the model's RNG-tracker fork, so it differs per TP rank and follows the tracker's seed).

On CUDA it is ``auto``'s choice in fp16/bf16; it also runs on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` before the first call), which is how the tests check it.
"""
import importlib.util

import torch

from megatron_vega.ops.attention.support import CoreSupport

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
_SEED_RANGE = 2 ** 30  # the kernel adds the (sequence, head) index to the seed: it stays an int32


def _kernels():
    from megatron_vega.ops.triton import attention_kernels  # lazily: TRITON_INTERPRET is read when it is defined
    return attention_kernels


def _blocks(t: int, head_dim: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D). tl.dot wants every side >= 16; on the interpreter small tiles are faster."""
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    if device.type != "cuda":
        return 16, 16, block_d
    return (64, 64, block_d) if block_d <= 64 else (64, 32, block_d)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, c2p, p2c, index, mask, dropout_p: float, seed: int, scale: float, prefix: int):
        """q [b, h, s, d]; k, v [b, h, t, d] (deep-prompt keys first); c2p, p2c [b, h, s, R] fp32 or None;
        index [1 or b, s, s] int32; mask [b, 1 or h, s, t] fp32 or None."""
        b, h, s, d = q.shape
        out = q.new_empty(b, h, s, d)
        row_max = torch.empty(b, h, s, device=q.device, dtype=torch.float32)
        row_sum = torch.empty_like(row_max)
        args, meta = _launch_args(q, k, v, c2p, p2c, index, mask, dropout_p, seed, scale, prefix)
        grid = (triton_cdiv(s, meta["BLOCK_M"]), b * h)
        _kernels().attention_forward[grid](q, k, v, *args[:4], out, row_max, row_sum, *args[4:], **meta)
        ctx.save_for_backward(q, k, v, c2p, p2c, index, mask, out, row_max, row_sum)
        ctx.params = (dropout_p, seed, scale, prefix)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, c2p, p2c, index, mask, out, row_max, row_sum = ctx.saved_tensors
        dropout_p, seed, scale, prefix = ctx.params
        b, h, s, d = q.shape
        t = k.shape[2]
        grad_out = grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1)  # rowsum(dO * O) = sum_j P_ij dP_ij, dropout included
        dq = torch.empty(b, h, s, d, device=q.device, dtype=torch.float32)
        dk = torch.empty(b, h, t, d, device=q.device, dtype=torch.float32)
        dv = torch.empty_like(dk)
        dc2p = None if c2p is None else torch.zeros_like(c2p)
        dp2c = None if p2c is None else torch.zeros_like(p2c)
        args, meta = _launch_args(q, k, v, c2p, p2c, index, mask, dropout_p, seed, scale, prefix)
        kernels = _kernels()
        head = (q, k, v, *args[:4], grad_out, row_max, row_sum, delta)
        kernels.attention_backward_kv[(triton_cdiv(t, meta["BLOCK_N"]), b * h)](
            *head, dk, dv, dp2c if dp2c is not None else dk, *args[4:], **meta)
        kernels.attention_backward_q[(triton_cdiv(s, meta["BLOCK_M"]), b * h)](
            *head, dq, dc2p if dc2p is not None else dq, *args[4:], **meta)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dc2p, dp2c, *(None,) * 6)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _launch_args(q, k, v, c2p, p2c, index, mask, dropout_p, seed, scale, prefix):
    b, h, s, d = q.shape
    t = k.shape[2]
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and k.stride() == v.stride()
    table = c2p if c2p is not None else p2c
    rows = 0 if table is None else table.shape[-1]
    dummy = q  # an unused pointer where a term is off (the constexpr flags skip it)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               0 if index.shape[0] == 1 else index.stride(0),
               *((0, 0, 0) if mask is None else (mask.stride(0), 0 if mask.shape[1] == 1 else mask.stride(1),
                                                 mask.stride(2))))
    block_m, block_n, block_d = _blocks(t, d, q.device)
    args = (dummy if c2p is None else c2p, dummy if p2c is None else p2c, index, dummy if mask is None else mask,
            *strides, h, s, t, prefix, d, rows, scale, dropout_p, seed)
    meta = dict(HAS_C2P=c2p is not None, HAS_P2C=p2c is not None, HAS_MASK=mask is not None,
                HAS_DROPOUT=dropout_p > 0, IEEE=q.dtype == torch.float32,
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    return args, meta


def triton_attention(q, k, v, prefix_key, prefix_value, pos_key, pos_query, rel_index, mask_bias, dropout_p: float,
                     scale: float, seed: int | None = None):
    """softmax(scale Q K^T + c2p + p2c + mask) V by the kernels; q, k, v [b, h, s, d], pos_* [h, 2k, d] (scaled)
    or None. ``seed``: the dropout seed (None: drawn from the current generator of q's device)."""
    b, h, s, d = q.shape
    prefix = 0 if prefix_key is None else prefix_key.shape[2]
    if prefix:  # deep-prompt keys/values in front: a [b, h, P + s, d] copy, small beside the scores
        k, v = torch.cat([prefix_key, k], 2), torch.cat([prefix_value, v], 2)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if k.stride() != v.stride():
        k, v = k.contiguous(), v.contiguous()
    # The [s, 2k] tables per head: ordinary matmuls, in fp32 for the gather (their gradients flow by autograd)
    c2p = None if pos_key is None else torch.matmul(q, pos_key.transpose(-1, -2)).float().contiguous()
    p2c = None if pos_query is None else torch.matmul(k[:, :, prefix:], pos_query.transpose(-1, -2)).float()
    p2c = None if p2c is None else p2c.contiguous()
    index = (rel_index if rel_index.dim() == 3 else rel_index[None]).to(torch.int32).contiguous()
    if mask_bias is not None:  # fp32, a low-precision "lowest" kept lowest: a fully masked (padded) row then
        # stays uniform as in fp32, not a softmax of the scores that -65504 (fp16) would no longer drown in fp32
        lowest = mask_bias <= torch.finfo(mask_bias.dtype).min
        mask_bias = mask_bias.float().masked_fill_(lowest, torch.finfo(torch.float32).min)
    mask = None if mask_bias is None else mask_bias.expand(b, -1, s, prefix + s).contiguous()
    if dropout_p > 0 and seed is None:
        seed = int(torch.randint(_SEED_RANGE, (), device=q.device))
    out = _TritonAttention.apply(q, k, v, c2p, p2c, index, mask, float(dropout_p), seed or 0, float(scale), prefix)
    return out


class TritonCore:
    """The core interface (ops/attention/__init__.py) over the kernels. fp32 runs with IEEE dot products (exact,
    slow); ``auto`` takes it on CUDA in fp16/bf16."""
    name = "triton"
    support = CoreSupport(device_types=frozenset({"cuda"} if TRITON_AVAILABLE else ()),
                          dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}),
                          per_sample_positions=True, masks=True, prefix=True, dropout=True)

    def preferred(self, device: torch.device, dtype: torch.dtype) -> bool:
        return dtype in (torch.float16, torch.bfloat16)

    def __call__(self, qkv, prefix_key, prefix_value, pos_key, pos_query, rel_index, mask_bias, dropout_p: float,
                 scale: float):
        return triton_attention(qkv[0], qkv[1], qkv[2], prefix_key, prefix_value, pos_key, pos_query, rel_index,
                                mask_bias, dropout_p, scale)
