"""The Triton per-chunk kernels of the fused projection + soft-target CE under the interpreter: against the torch
per-chunk functions on a chunk wider than one kernel block, and the whole op with them against the logits op."""
import torch

import tests.ops.triton.interpreter  # noqa: F401  (sets TRITON_INTERPRET before the kernels are defined)
from megatron_vega.ops import fused_linear_cross_entropy as fused
from tests.ops.test_fused_linear_cross_entropy import compare


def _kernels():
    from megatron_vega.ops.triton import soft_target_kernels
    return soft_target_kernels


def test_chunk_kernels_match_the_torch_functions():
    kernels = _kernels()
    gen = torch.Generator().manual_seed(0)
    rows, cols = 5, kernels.BLOCK + 300
    z = torch.randn(rows, cols, generator=gen) * 3
    y = z + torch.randn(rows, cols, generator=gen)
    local_t = torch.tensor([0, cols - 1, -1, 700, 1100])
    g = torch.rand(rows, generator=gen)
    for ref in (y, None):
        z_torch, y_torch = z.clone(), None if ref is None else ref.clone()  # the torch functions work in place
        got, want = kernels.chunk_stats(z, ref, local_t), fused._torch_chunk_stats(z_torch, y_torch, local_t)
        for name, a, b in zip(fused._STATS, got, want):
            if name in (("m_y", "s_y", "a") if ref is None else ("u",)):
                continue  # unused in this mode
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4, msg=name)  # sums of 1324 signed terms
        stats = want[:4]
        torch.testing.assert_close(kernels.chunk_grad(z.clone(), ref, local_t, stats, got, g, 0.3, 1000),
                                   fused._torch_chunk_grad(z_torch, y_torch, local_t, stats, want, g, 0.3, 1000),
                                   rtol=0, atol=1e-7)


def test_the_op_with_the_kernels_equals_the_logits_op(single_process):
    kernels = _kernels()
    compare(1, 0, chunk_ops=(kernels.chunk_stats, kernels.chunk_grad))
