"""Triton kernels of the fused projection + soft-target CE (ops/fused_linear_cross_entropy.py): the per-chunk
elementwise work after the chunk's GEMMs, one pass over the chunk each (the torch path makes several). Same
contracts as the torch functions there: ``chunk_stats`` returns the per-row statistics of a [rows, cols] fp32 chunk,
``chunk_grad`` turns the student chunk into g·(softmax(z) − ỹ) in place (unlike the torch functions, the stats
kernel leaves z and y unchanged). Imported lazily (TRITON_INTERPRET)."""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _stats_kernel(Z, Y, T, OUT, n_rows, n_cols, stride_z, stride_y, HAS_Y: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row: OUT[k, row] for k = m_z, s_z, m_y, s_y, a, z_t, u (online over column blocks)."""
    row = tl.program_id(0)
    m_z = float("-inf")
    s_z = 0.0
    m_y = float("-inf")
    s_y = 0.0
    a = 0.0
    u = 0.0
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        ok = cols < n_cols
        z = tl.load(Z + row * stride_z + cols, mask=ok, other=float("-inf"))
        m_new = tl.maximum(m_z, tl.max(z, 0))
        s_z = s_z * tl.exp(m_z - m_new) + tl.sum(tl.where(ok, tl.exp(z - m_new), 0.0), 0)
        m_z = m_new
        u += tl.sum(tl.where(ok, z, 0.0), 0)
        if HAS_Y:
            y = tl.load(Y + row * stride_y + cols, mask=ok, other=float("-inf"))
            my_new = tl.maximum(m_y, tl.max(y, 0))
            ey = tl.where(ok, tl.exp(y - my_new), 0.0)
            scale = tl.exp(m_y - my_new)
            s_y = s_y * scale + tl.sum(ey, 0)
            a = a * scale + tl.sum(ey * tl.where(ok, z, 0.0), 0)
            m_y = my_new
    t = tl.load(T + row)
    z_t = tl.load(Z + row * stride_z + tl.maximum(t, 0))
    z_t = tl.where(t >= 0, z_t, 0.0)
    if not HAS_Y:
        m_y = 0.0
    tl.store(OUT + row, m_z)
    tl.store(OUT + n_rows + row, s_z)
    tl.store(OUT + 2 * n_rows + row, m_y)
    tl.store(OUT + 3 * n_rows + row, s_y)
    tl.store(OUT + 4 * n_rows + row, a)
    tl.store(OUT + 5 * n_rows + row, z_t)
    tl.store(OUT + 6 * n_rows + row, u)


@triton.jit
def _grad_kernel(Z, Y, T, M_Z, S_Z, M_Y, S_Y, G, n_cols, stride_z, stride_y, alpha, inv_vocab,
                 HAS_Y: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (row, column block): Z <- g·(exp(z − M_z) / S_z − α·r) − (1 − α)·g·[col == t]."""
    row, blk = tl.program_id(0), tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_cols
    g = tl.load(G + row)
    z = tl.load(Z + row * stride_z + cols, mask=ok, other=0.0)
    grad = tl.exp(z - tl.load(M_Z + row)) * (g / tl.load(S_Z + row))
    if HAS_Y:
        y = tl.load(Y + row * stride_y + cols, mask=ok, other=0.0)
        grad -= tl.exp(y - tl.load(M_Y + row)) * (alpha * g / tl.load(S_Y + row))
    else:
        grad -= alpha * g * inv_vocab
    grad = tl.where(cols == tl.load(T + row), grad - (1.0 - alpha) * g, grad)
    tl.store(Z + row * stride_z + cols, grad, mask=ok)


def chunk_stats(z, y, local_t):
    rows, cols = z.shape
    out = torch.empty(7, rows, dtype=torch.float32, device=z.device)
    _stats_kernel[(rows,)](z, z if y is None else y, local_t.to(torch.int32).contiguous(), out, rows, cols,
                           z.stride(0), 0 if y is None else y.stride(0), HAS_Y=y is not None, BLOCK=BLOCK)
    return tuple(out)


def chunk_grad(z, y, local_t, stats, local_stats, g, alpha: float, vocab_size: int):
    """local_stats: unused here (the kernels keep z and y as they are; the torch functions shift them in place)."""
    rows, cols = z.shape
    m_z, s_z, m_y, s_y = (x.contiguous() for x in stats)
    _grad_kernel[(rows, triton.cdiv(cols, BLOCK))](
        z, z if y is None else y, local_t.to(torch.int32).contiguous(), m_z, s_z, m_y, s_y, g.contiguous(), cols,
        z.stride(0), 0 if y is None else y.stride(0), alpha, 1.0 / vocab_size, HAS_Y=y is not None, BLOCK=BLOCK)
    return z
