"""Fused elementwise pieces of the post-LN layer on CUDA (Triton; docs/triton.md): bias + exact GELU, and
dropout + residual + LayerNorm. megatron-core's fused bias-GELU is the tanh approximation (DeBERTa uses erf) and
its fused LayerNorms are pre-LN, so these are our own. Each is an autograd Function over the kernels of
ops/triton/layer_kernels.py; ``enabled`` says whether the layer uses them (CUDA tensors and Triton importable),
otherwise the layer keeps its torch path.
"""
import importlib.util

import torch

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
_ROWS_PER_PROGRAM = 16  # rows whose weight/bias-gradient partials one backward program sums before writing them


def enabled(x: torch.Tensor) -> bool:
    return TRITON_AVAILABLE and x.is_cuda


def _kernels():
    from megatron_vega.ops.triton import layer_kernels  # lazily: TRITON_INTERPRET is read when it is defined
    return layer_kernels


def _block(n: int) -> int:
    return 1 << (n - 1).bit_length()


class _BiasGelu(torch.autograd.Function):
    BLOCK = 1024

    @staticmethod
    def forward(ctx, x, bias):
        x = x.contiguous()
        y = torch.empty_like(x)
        grid = (triton_cdiv(x.numel(), _BiasGelu.BLOCK),)
        _kernels().bias_gelu_forward[grid](x, bias, y, x.numel(), bias.numel(), BLOCK=_BiasGelu.BLOCK)
        ctx.save_for_backward(x, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dx = torch.empty_like(x)
        grid = (triton_cdiv(x.numel(), _BiasGelu.BLOCK),)
        _kernels().bias_gelu_backward[grid](x, bias, dy.contiguous(), dx, x.numel(), bias.numel(),
                                            BLOCK=_BiasGelu.BLOCK)
        return dx, dx.reshape(-1, bias.numel()).sum(0, dtype=torch.float32).to(bias.dtype)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(x + bias) with the exact (erf) GELU; bias [n] broadcast over x [..., n]."""
    return _BiasGelu.apply(x, bias)


class _DropoutAddLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps: float, p: float, seed: int):
        n = x.shape[-1]
        x2, res2 = x.reshape(-1, n).contiguous(), residual.reshape(-1, n).contiguous()
        rows = x2.shape[0]
        y, h = torch.empty_like(x2), torch.empty_like(x2)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        _kernels().dropout_add_layer_norm_forward[(rows,)](x2, res2, weight, bias, y, h, mean, rstd, n, eps, p, seed,
                                                          HAS_DROPOUT=p > 0, BLOCK=_block(n))
        ctx.save_for_backward(h, weight, mean, rstd)
        ctx.params = (p, seed, x.shape, weight.dtype, bias.dtype)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        h, weight, mean, rstd = ctx.saved_tensors
        p, seed, shape, w_dtype, b_dtype = ctx.params
        rows, n = h.shape
        programs = triton_cdiv(rows, _ROWS_PER_PROGRAM)
        dres, dx = torch.empty_like(h), torch.empty_like(h)
        dw = torch.empty(programs, n, device=h.device, dtype=torch.float32)
        db = torch.empty_like(dw)
        _kernels().dropout_add_layer_norm_backward[(programs,)](
            h, weight, dy.reshape(rows, n).contiguous(), mean, rstd, dres, dx, dw, db, rows, n, p, seed,
            ROWS_PER_PROGRAM=_ROWS_PER_PROGRAM, HAS_DROPOUT=p > 0, BLOCK=_block(n))
        return dx.view(shape), dres.view(shape), dw.sum(0).to(w_dtype), db.sum(0).to(b_dtype), None, None, None


def dropout_add_layer_norm(x, residual, norm: torch.nn.Module, p: float, training: bool, seed: int | None = None):
    """norm(residual + dropout(x, p)) for a LayerNorm module (its weight, bias, eps). ``seed``: the dropout seed
    (None: one draw of the current generator of x's device, so the RNG tracker's fork decides the mask)."""
    p = p if training else 0.0
    if p > 0 and seed is None:
        seed = int(torch.randint(2 ** 31 - 1, (), device=x.device))
    eps = norm.eps if isinstance(norm.eps, float) else float(norm.eps)
    return _DropoutAddLayerNorm.apply(x, residual, norm.weight, norm.bias, eps, float(p), seed or 0)
