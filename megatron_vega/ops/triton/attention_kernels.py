"""Triton kernels of the flash-style disentangled attention core (ops/attention/triton.py; docs/triton.md).

scores(i, j) = scale * Q_i.K_j + C2P[i, delta(i, j)] + P2C[j, delta(i, j)] + mask(i, j) for the sequence keys, and
scale * Q_i.K_j + mask(i, j) for the P deep-prompt keys in front (no position bias). C2P = Q Kr^T and P2C = K Qr^T
are [s, 2k] tables per head (ordinary matmuls, done by the caller): the kernels gather from them with the [s, s]
bucket index, so no [s, s] tensor per head is ever written. The forward keeps the rows' softmax max and sum;
the backward recomputes the probabilities tile by tile (one kernel for dK/dV by key block, one for dQ by query block)
and scatter-adds the score gradient into the tables' gradients (atomics: several keys share a bucket; a tile
row that shares one bucket is summed first). Dropout keeps (i, j) when rand(seed + b*h index, i * t + j) >= p,
so the backward regenerates the forward's mask from the seed.

This module is imported lazily, on the first call of the core: ``TRITON_INTERPRET=1`` must be set before the
kernels are defined for the interpreter (CPU tensors) to run them.
"""
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation; IEEE: exact fp32 products (fp32 inputs), else the tensor cores' precision."""
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _load_rows(PTR, base, offs, stride, offs_d, n_rows, head_dim):
    """The [len(offs), BLOCK_D] tile of rows offs of one (sequence, head) (zeros beyond n_rows and head_dim)."""
    ok = (offs[:, None] < n_rows) & (offs_d[None, :] < head_dim)
    return tl.load(PTR + base + offs[:, None] * stride + offs_d[None, :], mask=ok, other=0.0)


@triton.jit
def _load_row_stats(ROW_MAX, ROW_SUM, DELTA, bh, s_len, offs_m):
    """The forward's softmax max and sum and the backward's Δ = Σ_d dO·O of queries offs_m."""
    row_ok = offs_m < s_len
    row_max = tl.load(ROW_MAX + bh * s_len + offs_m, mask=row_ok, other=0.0)
    row_sum = tl.load(ROW_SUM + bh * s_len + offs_m, mask=row_ok, other=1.0)
    delta = tl.load(DELTA + bh * s_len + offs_m, mask=row_ok, other=0.0)
    return row_max, row_sum, delta


@triton.jit
def _bucket_tile(IDX, b, stride_ib, offs_m, offs_n, s_len, prefix):
    """(bucket index δ(i, j) of the tile, where it applies): sequence keys of real queries only (a key's position
    is offs_n − prefix; deep-prompt keys have none)."""
    jr = offs_n - prefix
    rel_ok = (offs_m[:, None] < s_len) & (jr[None, :] >= 0) & (jr[None, :] < s_len)
    idx = tl.load(IDX + b * stride_ib + offs_m[:, None] * s_len + jr[None, :], mask=rel_ok, other=0)
    return idx, rel_ok


@triton.jit
def _scores(q, k, bh, b, offs_m, offs_n, C2P, P2C, IDX, MASK, s_len, t_len, prefix, scale, R,
            stride_ib, stride_mb, stride_mh, stride_mm, h_idx,
            HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr):
    """The [BLOCK_M, BLOCK_N] score tile in fp32 (-inf beyond the t keys)."""
    scores = _dot(q, tl.trans(k), IEEE) * scale
    if HAS_C2P or HAS_P2C:
        idx, rel_ok = _bucket_tile(IDX, b, stride_ib, offs_m, offs_n, s_len, prefix)
        if HAS_C2P:  # C2P[i, delta(i, j)]
            scores += tl.load(C2P + (bh * s_len + offs_m[:, None]) * R + idx, mask=rel_ok, other=0.0)
        if HAS_P2C:  # P2C[j, delta(i, j)]
            jr = offs_n - prefix
            scores += tl.load(P2C + (bh * s_len + jr[None, :]) * R + idx, mask=rel_ok, other=0.0)
    if HAS_MASK:
        in_range = (offs_m[:, None] < s_len) & (offs_n[None, :] < t_len)
        scores += tl.load(MASK + b * stride_mb + h_idx * stride_mh + offs_m[:, None] * stride_mm + offs_n[None, :],
                          mask=in_range, other=0.0)
    return tl.where(offs_n[None, :] < t_len, scores, float("-inf"))


@triton.jit
def _scatter_add(rows_ptr, idx, ds, ok, AXIS: tl.constexpr):
    """Table gradient rows (one per key for AXIS = 0, per query for AXIS = 1) += ds at the bucket columns idx.
    Far from the diagonal a whole tile row shares one (clamped, extreme) bucket: those rows are summed first and
    added with one atomic each, the others element by element (atomics to one address serialise on a GPU)."""
    lo = tl.min(tl.where(ok, idx, 1 << 30), AXIS)
    hi = tl.max(tl.where(ok, idx, -1), AXIS)
    shared = (lo == hi) & (hi >= 0)
    tl.atomic_add(rows_ptr + lo, tl.sum(tl.where(ok, ds, 0.0), AXIS), mask=shared)
    if AXIS == 0:
        tl.atomic_add(rows_ptr[None, :] + idx, ds, mask=ok & ~shared[None, :])
    else:
        tl.atomic_add(rows_ptr[:, None] + idx, ds, mask=ok & ~shared[:, None])


@triton.jit
def _keep(seed, bh, offs_m, offs_n, t_len, p_drop):
    return tl.rand(seed + bh, offs_m[:, None] * t_len + offs_n[None, :]) >= p_drop


@triton.jit
def _tile_gradients(q, k, v, do, row_max, row_sum, delta, bh, b, offs_m, offs_n, C2P, P2C, IDX, MASK,
                    s_len, t_len, prefix, scale, R, stride_ib, stride_mb, stride_mh, stride_mm, h_idx, p_drop, seed,
                    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr,
                    HAS_DROPOUT: tl.constexpr, IEEE: tl.constexpr):
    """(the probabilities as applied to V, after dropout; dS, the scores' gradient, 0 on padded query rows) of one
    tile, recomputed from the saved row max and sum: the common part of both backward kernels."""
    scores = _scores(q, k, bh, b, offs_m, offs_n, C2P, P2C, IDX, MASK, s_len, t_len, prefix, scale, R,
                     stride_ib, stride_mb, stride_mh, stride_mm, h_idx, HAS_C2P, HAS_P2C, HAS_MASK, IEEE)
    p = tl.exp(scores - row_max[:, None]) / row_sum[:, None]
    dp = _dot(do, tl.trans(v), IEEE)
    p_used = p
    if HAS_DROPOUT:
        keep = _keep(seed, bh, offs_m, offs_n, t_len, p_drop)
        p_used = tl.where(keep, p / (1.0 - p_drop), 0.0)
        dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
    ds = p * (dp - delta[:, None])
    return p_used, tl.where((offs_m < s_len)[:, None], ds, 0.0)


@triton.jit
def attention_forward(Q, K, V, C2P, P2C, IDX, MASK, OUT, ROW_MAX, ROW_SUM,
                      stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                      stride_ib, stride_mb, stride_mh, stride_mm,
                      n_heads, s_len, t_len, prefix, head_dim, R, scale, p_drop, seed,
                      HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr,
                      HAS_DROPOUT: tl.constexpr, IEEE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: BLOCK_M queries of one (sequence, head); OUT [b, h, s, d] contiguous; ROW_MAX, ROW_SUM [b, h, s]
    fp32, the softmax's max and sum apart: a padded query's scores all sit at the mask's lowest value, where
    max + log(sum) would round back to the max and the backward's probabilities would lose the 1 / sum."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h_idx = bh // n_heads, bh % n_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, b * stride_qb + h_idx * stride_qh, offs_m, stride_qs, offs_d, s_len, head_dim)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    kv_base = b * stride_kb + h_idx * stride_kh
    for n0 in range(0, t_len, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(K, kv_base, offs_n, stride_ks, offs_d, t_len, head_dim)
        v = _load_rows(V, kv_base, offs_n, stride_ks, offs_d, t_len, head_dim)
        scores = _scores(q, k, bh, b, offs_m, offs_n, C2P, P2C, IDX, MASK, s_len, t_len, prefix, scale, R,
                         stride_ib, stride_mb, stride_mh, stride_mm, h_idx, HAS_C2P, HAS_P2C, HAS_MASK, IEEE)
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            p = tl.where(_keep(seed, bh, offs_m, offs_n, t_len, p_drop), p / (1.0 - p_drop), 0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    acc = acc / l_i[:, None]
    row_ok = offs_m < s_len
    tl.store(OUT + (bh * s_len + offs_m[:, None]) * head_dim + offs_d[None, :], acc.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < head_dim))
    tl.store(ROW_MAX + bh * s_len + offs_m, m_i, mask=row_ok)
    tl.store(ROW_SUM + bh * s_len + offs_m, l_i, mask=row_ok)


@triton.jit
def attention_backward_kv(Q, K, V, C2P, P2C, IDX, MASK, DO, ROW_MAX, ROW_SUM, DELTA, DK, DV, DP2C,
                          stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                          stride_ib, stride_mb, stride_mh, stride_mm,
                          n_heads, s_len, t_len, prefix, head_dim, R, scale, p_drop, seed,
                          HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr,
                          HAS_DROPOUT: tl.constexpr, IEEE: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: BLOCK_N keys of one (sequence, head) -> dK, dV [b, h, t, d] fp32 and the P2C table's gradient
    (its rows are these keys; atomics because keys of one row share buckets)."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h_idx = bh // n_heads, bh % n_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_base = b * stride_kb + h_idx * stride_kh
    k = _load_rows(K, kv_base, offs_n, stride_ks, offs_d, t_len, head_dim)
    v = _load_rows(V, kv_base, offs_n, stride_ks, offs_d, t_len, head_dim)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for m0 in range(0, s_len, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = _load_rows(Q, b * stride_qb + h_idx * stride_qh, offs_m, stride_qs, offs_d, s_len, head_dim)
        do = _load_rows(DO, bh * s_len * head_dim, offs_m, head_dim, offs_d, s_len, head_dim)
        row_max, row_sum, delta = _load_row_stats(ROW_MAX, ROW_SUM, DELTA, bh, s_len, offs_m)
        p_used, ds = _tile_gradients(q, k, v, do, row_max, row_sum, delta, bh, b, offs_m, offs_n, C2P, P2C, IDX,
                                     MASK, s_len, t_len, prefix, scale, R, stride_ib, stride_mb, stride_mh,
                                     stride_mm, h_idx, p_drop, seed, HAS_C2P, HAS_P2C, HAS_MASK, HAS_DROPOUT, IEEE)
        dv += _dot(tl.trans(p_used.to(do.dtype)), do, IEEE)
        dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
        if HAS_P2C:
            idx, rel_ok = _bucket_tile(IDX, b, stride_ib, offs_m, offs_n, s_len, prefix)
            _scatter_add(DP2C + (bh * s_len + offs_n - prefix) * R, idx, ds, rel_ok, 0)
    kv_ok = (offs_n[:, None] < t_len) & (offs_d[None, :] < head_dim)
    out = (bh * t_len + offs_n[:, None]) * head_dim + offs_d[None, :]
    tl.store(DK + out, dk * scale, mask=kv_ok)
    tl.store(DV + out, dv, mask=kv_ok)


@triton.jit
def attention_backward_q(Q, K, V, C2P, P2C, IDX, MASK, DO, ROW_MAX, ROW_SUM, DELTA, DQ, DC2P,
                         stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                         stride_ib, stride_mb, stride_mh, stride_mm,
                         n_heads, s_len, t_len, prefix, head_dim, R, scale, p_drop, seed,
                         HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_MASK: tl.constexpr,
                         HAS_DROPOUT: tl.constexpr, IEEE: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: BLOCK_M queries of one (sequence, head) -> dQ [b, h, s, d] fp32 and the C2P table's gradient
    (its rows are these queries)."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h_idx = bh // n_heads, bh % n_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, b * stride_qb + h_idx * stride_qh, offs_m, stride_qs, offs_d, s_len, head_dim)
    do = _load_rows(DO, bh * s_len * head_dim, offs_m, head_dim, offs_d, s_len, head_dim)
    row_max, row_sum, delta = _load_row_stats(ROW_MAX, ROW_SUM, DELTA, bh, s_len, offs_m)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    kv_base = b * stride_kb + h_idx * stride_kh
    for n0 in range(0, t_len, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(K, kv_base, offs_n, stride_ks, offs_d, t_len, head_dim)
        v = _load_rows(V, kv_base, offs_n, stride_ks, offs_d, t_len, head_dim)
        _, ds = _tile_gradients(q, k, v, do, row_max, row_sum, delta, bh, b, offs_m, offs_n, C2P, P2C, IDX, MASK,
                                s_len, t_len, prefix, scale, R, stride_ib, stride_mb, stride_mh, stride_mm, h_idx,
                                p_drop, seed, HAS_C2P, HAS_P2C, HAS_MASK, HAS_DROPOUT, IEEE)
        dq += _dot(ds.to(k.dtype), k, IEEE)
        if HAS_C2P:
            idx, rel_ok = _bucket_tile(IDX, b, stride_ib, offs_m, offs_n, s_len, prefix)
            _scatter_add(DC2P + (bh * s_len + offs_m) * R, idx, ds, rel_ok, 1)
    tl.store(DQ + (bh * s_len + offs_m[:, None]) * head_dim + offs_d[None, :], dq * scale,
             mask=(offs_m[:, None] < s_len) & (offs_d[None, :] < head_dim))


@triton.jit
def dropout_keep_mask(KEEP, s_len, t_len, p_drop, seed, BLOCK: tl.constexpr):
    """KEEP [b*h, s, t] int8: the forward's dropout mask, for tests that rebuild it in a reference."""
    row, bh = tl.program_id(0), tl.program_id(1)
    for n0 in range(0, t_len, BLOCK):
        offs_n = n0 + tl.arange(0, BLOCK)
        keep = tl.rand(seed + bh, row * t_len + offs_n) >= p_drop
        tl.store(KEEP + (bh * s_len + row) * t_len + offs_n, keep.to(tl.int8), mask=offs_n < t_len)
