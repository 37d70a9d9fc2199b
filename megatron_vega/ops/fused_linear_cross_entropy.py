"""The output projection and self-evolution's soft-target cross entropy in one op, chunked over tokens AND vocabulary
so that neither the student's nor the reference's logits of all masked tokens ever exist (docs/triton.md).

It computes what ``smoothed_vocab_parallel_cross_entropy`` computes from the logits z = h W^T + b (student) and
y = h_ref W^T + b (reference), from the hidden states instead. Per token, with ỹ = (1−α)·onehot(t) + α·r:

    loss = log S_z + M_z − (1−α)·z_t − α·Σ_v r_v·z_v,   Σ_v r_v·z_v = A / S_y,   A = Σ_v exp(y_v − M_y)·z_v

(uniform smoothing: Σ_v r_v·z_v = Σ_{v<K} z_v / K). Every statistic is a running one over vocabulary chunks:
the maxima M, the sums S rescaled by exp(M_old − M_new) when a maximum grows (A with the reference's), the target
logit z_t and the plain sum of z. Tensor-parallel ranks then merge their per-token statistics exactly as chunks
merge (all-reduce MAX of the maxima, then SUM of the rescaled sums): per-token scalars only cross ranks, as in the
logits op. Padded vocabulary entries (global id >= vocab_size) are left out of every chunk (the logits op gives
them −1e30: no probability, no gradient).

The backward recomputes both logits chunk by chunk and forms the logits' gradient g·(softmax(z) − ỹ) one chunk at
a time, accumulating dH += G W_c, dW_c = G^T h, db_c = Σ G. dH is this rank's partial sum over its vocabulary
shard: as for the head's linear, the caller's copy_to_tensor_model_parallel_region all-reduces it.

Cost: the forward does the two projections (student and reference), the backward both again plus the two gradient
GEMMs: 6 GEMMs against the materialised path's 4, for memory that no longer grows with tokens × vocabulary. On CUDA
the per-chunk elementwise work (statistics; gradient in place) runs in Triton kernels (ops/triton/
soft_target_kernels.py); elsewhere in torch.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state

TOKEN_CHUNK, VOCAB_CHUNK = 1024, 8192  # a [1024, 8192] fp32 chunk is 32 MiB; two or three exist at a time
_STATS = ("m_z", "s_z", "m_y", "s_y", "a", "z_t", "u")


def _torch_chunk_stats(z, y, local_t):
    """Per-row statistics of one [rows, cols] chunk (fp32): (m_z, s_z, m_y, s_y, a, z_t, u); local_t: the target's
    column in this chunk or −1."""
    rows = torch.arange(z.size(0), device=z.device)
    in_chunk = local_t >= 0
    z_t = torch.where(in_chunk, z[rows, local_t.clamp(min=0)], 0.0)
    m_z = z.amax(-1)
    s_z = torch.exp(z - m_z[:, None]).sum(-1)
    if y is None:
        zero = torch.zeros_like(m_z)
        return m_z, s_z, zero, zero, zero, z_t, z.sum(-1)
    m_y = y.amax(-1)
    ey = torch.exp(y - m_y[:, None])
    return m_z, s_z, m_y, ey.sum(-1), (ey * z).sum(-1), z_t, torch.zeros_like(m_z)


def _torch_chunk_grad(z, y, local_t, stats, g, alpha: float, vocab_size: int):
    """z becomes g·(softmax(z) − ỹ) in place; stats: the global (m_z, s_z, m_y, s_y) of these rows."""
    m_z, s_z, m_y, s_y = stats
    z.sub_(m_z[:, None]).exp_().mul_((g / s_z)[:, None])
    if y is None:
        z.sub_((alpha / vocab_size) * g[:, None])
    else:
        z.sub_(torch.exp(y - m_y[:, None]).mul_((alpha * g / s_y)[:, None]))
    rows = torch.nonzero(local_t >= 0).squeeze(1)
    z[rows, local_t[rows]] -= (1.0 - alpha) * g[rows]
    return z


def _merge(run, new):
    """Running statistics (m_z, s_z, m_y, s_y, a, z_t, u) merged with a chunk's (or another rank's)."""
    m_z, m_y = torch.maximum(run[0], new[0]), torch.maximum(run[2], new[2])
    fz0, fz1 = _rescale(run[0], m_z), _rescale(new[0], m_z)
    fy0, fy1 = _rescale(run[2], m_y), _rescale(new[2], m_y)
    return (m_z, run[1] * fz0 + new[1] * fz1, m_y, run[3] * fy0 + new[3] * fy1, run[4] * fy0 + new[4] * fy1,
            run[5] + new[5], run[6] + new[6])


def _rescale(m_old, m_new):
    """exp(m_old − m_new), 0 where m_old is −inf (nothing seen yet: a rank whose shard is all padding)."""
    return torch.where(torch.isneginf(m_old), 0.0, torch.exp(m_old - m_new))


def _chunk_ops(device: torch.device):
    if device.type == "cuda":
        from megatron_vega.ops.triton import soft_target_kernels
        return soft_target_kernels.chunk_stats, soft_target_kernels.chunk_grad
    return _torch_chunk_stats, _torch_chunk_grad


def _logits(h, weight, bias, c0, c1):
    z = F.linear(h.float(), weight[c0:c1].float())
    return z if bias is None else z.add_(bias[c0:c1].float())


class _FusedLinearSoftTargetCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, bias, target, alpha, ignore_index, vocab_size, chunks, ops):
        n = hidden.size(0)
        v_local = weight.size(0)
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * v_local
        real_local = min(max(vocab_size - vocab_start, 0), v_local)
        token_chunk, vocab_chunk = chunks
        chunk_stats = (ops or _chunk_ops(hidden.device))[0]
        ninf = torch.full((n,), float("-inf"), device=hidden.device)
        zero = torch.zeros(n, device=hidden.device)
        run = [ninf, zero, ninf.clone(), zero.clone(), zero.clone(), zero.clone(), zero.clone()]
        for r0 in range(0, n, token_chunk):
            r1 = min(n, r0 + token_chunk)
            t = target[r0:r1] - vocab_start
            h, h_ref = hidden[r0:r1], None if ref_hidden is None else ref_hidden[r0:r1]
            part = None
            for c0 in range(0, real_local, vocab_chunk):
                c1 = min(real_local, c0 + vocab_chunk)
                local_t = torch.where((t >= c0) & (t < c1), t - c0, -1)
                new = chunk_stats(_logits(h, weight, bias, c0, c1),
                                  None if h_ref is None else _logits(h_ref, weight, bias, c0, c1), local_t)
                part = new if part is None else _merge(part, new)
            if part is not None:
                for i in range(7):
                    run[i][r0:r1] = part[i]
        run = _all_ranks(run)
        m_z, s_z, m_y, s_y, a, z_t, u = run
        r_term = u / vocab_size if ref_hidden is None else a / s_y
        valid = target != ignore_index
        loss = torch.where(valid, s_z.log() + m_z - (1.0 - alpha) * z_t - alpha * r_term, 0.0)
        ctx.save_for_backward(hidden, ref_hidden, weight, bias, target, m_z, s_z, m_y, s_y)
        ctx.params = (alpha, ignore_index, vocab_size, chunks, ops, vocab_start, real_local)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, ref_hidden, weight, bias, target, *stats = ctx.saved_tensors
        alpha, ignore_index, vocab_size, (token_chunk, vocab_chunk), ops, vocab_start, real_local = ctx.params
        chunk_grad = (ops or _chunk_ops(hidden.device))[1]
        g = torch.where(target != ignore_index, grad_loss.float(), 0.0)
        d_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        d_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        for r0 in range(0, hidden.size(0), token_chunk):
            r1 = min(hidden.size(0), r0 + token_chunk)
            t = target[r0:r1] - vocab_start
            h = hidden[r0:r1].float()
            h_ref = None if ref_hidden is None else ref_hidden[r0:r1]
            row_stats = [x[r0:r1] for x in stats]
            for c0 in range(0, real_local, vocab_chunk):
                c1 = min(real_local, c0 + vocab_chunk)
                local_t = torch.where((t >= c0) & (t < c1), t - c0, -1)
                grad = chunk_grad(_logits(h, weight, bias, c0, c1),
                                  None if h_ref is None else _logits(h_ref, weight, bias, c0, c1), local_t,
                                  row_stats, g[r0:r1], alpha, vocab_size)
                d_hidden[r0:r1].addmm_(grad, weight[c0:c1].float())
                d_weight[c0:c1].addmm_(grad.t(), h)
                if d_bias is not None:
                    d_bias[c0:c1] += grad.sum(0)
        return (d_hidden.to(hidden.dtype), None, d_weight.to(weight.dtype),
                None if d_bias is None else d_bias.to(bias.dtype), *(None,) * 6)


def _all_ranks(run):
    """The per-token statistics over the whole vocabulary: every TP rank's merged as chunks are."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return run
    group = parallel_state.get_tensor_model_parallel_group()
    maxima = torch.stack([run[0], run[2]])
    dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
    fz, fy = _rescale(run[0], maxima[0]), _rescale(run[2], maxima[1])
    sums = torch.stack([run[1] * fz, run[3] * fy, run[4] * fy, run[5], run[6]])
    dist.all_reduce(sums, group=group)
    return maxima[0], sums[0], maxima[1], sums[1], sums[2], sums[3], sums[4]


def fused_linear_soft_target_cross_entropy(hidden, reference_hidden, weight, bias, target, alpha: float,
                                           vocab_size: int, ignore_index: int = -100,
                                           token_chunk: int = TOKEN_CHUNK, vocab_chunk: int = VOCAB_CHUNK,
                                           chunk_ops=None):
    """Per-token −Σ_v ỹ_v·log softmax(h W^T + b)_v with ỹ = (1−α)·onehot(target) + α·softmax(h_ref W^T + b)
    (``reference_hidden`` None: α spread uniformly over the first ``vocab_size`` ids), never holding more than a
    [token_chunk, vocab_chunk] block of logits. hidden, reference_hidden: [n, H] (the reference gets no gradient);
    weight [V/tp, H] and bias [V/tp] (or None): this rank's vocabulary shard; target [n] global ids. Returns fp32
    losses [n]. ``chunk_ops``: (stats, grad) per-chunk functions (default: Triton on CUDA, torch elsewhere)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if hidden.dim() != 2 or target.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [n, H] with target [n], got {tuple(target.shape)}")
    ref = None if reference_hidden is None else reference_hidden.detach()
    return _FusedLinearSoftTargetCE.apply(hidden, ref, weight, bias, target, float(alpha), ignore_index, vocab_size,
                                          (token_chunk, vocab_chunk), chunk_ops)
