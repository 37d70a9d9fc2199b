"""Triton kernels of the post-LN layer's elementwise pieces (ops/fused_layer.py; docs/triton.md): bias + exact (erf)
GELU, and dropout + residual + LayerNorm, forward and backward. Statistics in fp32 whatever the input dtype. The
dropout mask is regenerated in the backward from the seed: keep (row, col) when rand(seed, row * n + col) >= p.
Imported lazily (TRITON_INTERPRET must be set before the kernels are defined for the interpreter)."""
import triton
import triton.language as tl

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def bias_gelu_forward(X, B, Y, n_elements, n_cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_elements
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32) + tl.load(B + offs % n_cols, mask=ok, other=0.0)
    y = 0.5 * x * (1.0 + tl.math.erf(x * _SQRT1_2))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def bias_gelu_backward(X, B, DY, DX, n_elements, n_cols, BLOCK: tl.constexpr):
    """DX = DY * GELU'(x + b) with GELU'(u) = Φ(u) + u φ(u); the bias gradient is DX summed over rows (torch)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_elements
    u = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32) + tl.load(B + offs % n_cols, mask=ok, other=0.0)
    dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
    grad = 0.5 * (1.0 + tl.math.erf(u * _SQRT1_2)) + u * _INV_SQRT_2PI * tl.exp(-0.5 * u * u)
    tl.store(DX + offs, (dy * grad).to(DX.dtype.element_ty), mask=ok)


@triton.jit
def dropout_add_layer_norm_forward(X, RES, W, B, Y, H, MEAN, RSTD, n_cols, eps, p_drop, seed,
                                   HAS_DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    """One row per program: H = RES + dropout(X) (saved for the backward), Y = LayerNorm(H) * W + B."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_DROPOUT:
        x = tl.where(tl.rand(seed, row * n_cols + cols) >= p_drop, x / (1.0 - p_drop), 0.0)
    h = x + tl.load(RES + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(h, 0) / n_cols
    centered = tl.where(ok, h - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 0) / n_cols + eps)
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(H + row * n_cols + cols, h.to(H.dtype.element_ty), mask=ok)
    tl.store(Y + row * n_cols + cols, (centered * rstd * w + b).to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def dropout_add_layer_norm_backward(H, W, DY, MEAN, RSTD, DRES, DX, DW_PART, DB_PART, n_rows, n_cols, p_drop, seed,
                                    ROWS_PER_PROGRAM: tl.constexpr, HAS_DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    """ROWS_PER_PROGRAM rows per program: DRES = dL/dH, DX = DRES * keep / (1 − p); this program's partial sums of
    the weight and bias gradients go to row ``program_id`` of DW_PART, DB_PART (summed by the caller)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), tl.float32)
    db = tl.zeros((BLOCK,), tl.float32)
    for i in range(ROWS_PER_PROGRAM):
        row = pid * ROWS_PER_PROGRAM + i
        if row < n_rows:
            h = tl.load(H + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
            xhat = tl.where(ok, (h - tl.load(MEAN + row)) * tl.load(RSTD + row), 0.0)
            dw += dy * xhat
            db += dy
            dxhat = dy * w
            dh = (dxhat - tl.sum(dxhat, 0) / n_cols - xhat * (tl.sum(dxhat * xhat, 0) / n_cols)) * tl.load(RSTD + row)
            tl.store(DRES + row * n_cols + cols, dh.to(DRES.dtype.element_ty), mask=ok)
            if HAS_DROPOUT:
                dh = tl.where(tl.rand(seed, row * n_cols + cols) >= p_drop, dh / (1.0 - p_drop), 0.0)
            tl.store(DX + row * n_cols + cols, dh.to(DX.dtype.element_ty), mask=ok)
    tl.store(DW_PART + pid * n_cols + cols, dw, mask=ok)
    tl.store(DB_PART + pid * n_cols + cols, db, mask=ok)


@triton.jit
def dropout_keep(KEEP, n_cols, p_drop, seed, BLOCK: tl.constexpr):
    """KEEP [rows, n] int8: the forward's mask, for tests that rebuild the op in torch."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    keep = tl.rand(seed, row * n_cols + cols) >= p_drop
    tl.store(KEEP + row * n_cols + cols, keep.to(tl.int8), mask=cols < n_cols)
