"""The output projection and self-evolution's soft-target cross entropy in one op, chunked over tokens so that
neither the student's nor the reference's logits of all masked tokens ever exist (docs/triton.md).

It computes what ``smoothed_vocab_parallel_cross_entropy`` computes from the logits z = h W^T + b (student) and
y = h_ref W^T + b (reference), from the hidden states instead. Per token, with ỹ = (1−α)·onehot(t) + α·r:

    loss = log S_z + M_z − (1−α)·z_t − α·Σ_v r_v·z_v,   Σ_v r_v·z_v = A / S_y,   A = Σ_v exp(y_v − M_y)·z_v

(uniform smoothing: Σ_v r_v·z_v = Σ_{v<K} z_v / K). Tokens go in chunks of whole rows of this rank's vocabulary
shard: per chunk, the two projections (the reference's without grad), the per-token statistics (maxima M, sums S,
A, the target logit z_t, the plain sum of z), merged across tensor-parallel ranks (all-reduce MAX of the maxima,
then SUM of the rescaled sums: per-token scalars only cross ranks, as in the logits op), the loss, and at once the
logits' gradient w·(softmax(z) − ỹ) in place of z, turned into dH = G W and accumulated into dW += Gᵀ h,
db += Σ G. Padded vocabulary rows (global id >= vocab_size) are left out (the logits op gives them −1e30: no
probability, no gradient).

The op returns a scalar, Σ_i w_i·loss_i (w: the caller's per-token weights, 0 for ignored tokens), so the
backward only scales the stored gradients by the incoming scalar: four GEMMs of n·V·H, as the materialised path,
none recomputed. dH is this rank's partial sum over its vocabulary shard: as for the head's linear, the caller's
copy_to_tensor_model_parallel_region all-reduces it. On CUDA the statistics and the in-place gradient run in Triton
kernels (ops/triton/soft_target_kernels.py); elsewhere in torch.
"""
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state

from megatron_vega import runtime

# Rows of the token chunk: about CHUNK_ELEMENTS logits per chunk (256 MiB in fp32; the student's and the reference's
# buffers exist at once): 523 tokens at V = 128100.
CHUNK_ELEMENTS = 1 << 26
VOCAB_CHUNK = 8192  # rows of a low-precision weight cast to fp32 at a time where such GEMMs are emulated
_STATS = ("m_z", "s_z", "m_y", "s_y", "a", "z_t", "u")


class FusedCrossEntropy(NamedTuple):
    loss: torch.Tensor  # scalar Σ_i w_i·loss_i, differentiable
    token_losses: torch.Tensor  # [n] soft-target losses (0 at ignored tokens), detached
    token_nll: torch.Tensor  # [n] −log p(target), the plain MLM loss of each token (0 at ignored tokens), detached


def _torch_chunk_stats(z, y, local_t):
    """Per-row statistics of one [rows, cols] chunk (fp32): (m_z, s_z, m_y, s_y, a, z_t, u); local_t: the target's
    column in this chunk or −1. Turns z and y in place into exp(z − m_z) and exp(y − m_y) (these local maxima), which
    _torch_chunk_grad reads: a few passes over the chunk and no temporary of its size (on CPU it is memory-bound)."""
    rows = torch.arange(z.size(0), device=z.device)
    z_t = torch.where(local_t >= 0, z[rows, local_t.clamp(min=0)], 0.0)
    m_z = z.amax(-1)
    zero = torch.zeros_like(m_z)
    if y is None:
        u, m_y, s_y, a = z.sum(-1), zero, zero, zero
    else:
        m_y = y.amax(-1)
        y.sub_(m_y[:, None]).exp_()
        u, s_y = zero, y.sum(-1)
        a = torch.bmm(y.unsqueeze(1), z.unsqueeze(2)).view(-1)  # Σ exp(y − m_y)·z, row by row
    z.sub_(m_z[:, None]).exp_()
    return m_z, z.sum(-1), m_y, s_y, a, z_t, u


def _torch_chunk_grad(z, y, local_t, stats, local_stats, g, alpha: float, vocab_size: int):
    """z (exp(z − m_z) of the local maxima, from _torch_chunk_stats) becomes g·(softmax(z) − ỹ) in place; stats: the
    global (m_z, s_z, m_y, s_y) of these rows, local_stats: this chunk's own, whose maxima z and y were shifted by."""
    m_z, s_z, m_y, s_y = stats
    z.mul_((g / s_z * torch.exp(local_stats[0] - m_z))[:, None])
    if y is None:
        z.sub_((alpha / vocab_size) * g[:, None])
    else:
        z.addcmul_(y, (-alpha * g / s_y * torch.exp(local_stats[2] - m_y))[:, None])
    rows = torch.nonzero(local_t >= 0).squeeze(1)
    z[rows, local_t[rows]] -= (1.0 - alpha) * g[rows]
    return z


def _rescale(m_old, m_new):
    """exp(m_old − m_new), 0 where m_old is −inf (nothing seen yet: a rank whose shard is all padding)."""
    return torch.where(torch.isneginf(m_old), 0.0, torch.exp(m_old - m_new))


def _chunk_ops(device: torch.device):
    if device.type == "cuda":
        from megatron_vega.ops.triton import soft_target_kernels
        return soft_target_kernels.chunk_stats, soft_target_kernels.chunk_grad
    return _torch_chunk_stats, _torch_chunk_grad


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


class _Gemms:
    """The three GEMMs against this rank's real vocabulary rows W [V', H]: in one call where the weight's dtype is
    computed natively (fp32 anywhere; bf16/fp16 on GPUs: low-precision inputs, fp32 logits as the MLM head's
    linear_in_fp32 gives), else in fp32 on blocks of ``block`` rows cast at a time (no fp32 copy of the table)."""

    def __init__(self, weight, bias, block: int):
        self.weight, self.bias, self.block = weight, bias, block
        self.native = weight.dtype == torch.float32 or runtime.low_precision_gemm_native(weight.dtype)

    def _blocks(self):
        for c0 in range(0, self.weight.size(0), self.block):
            c1 = min(self.weight.size(0), c0 + self.block)
            yield c0, c1, self.weight[c0:c1].float()

    def logits(self, h, buffer):
        """fp32 [rows, V'] = h Wᵀ + b, in ``buffer[:rows]`` where the GEMM can write fp32 (a buffer reused from chunk
        to chunk: on CPU a fresh allocation of that size costs page faults every time)."""
        z = buffer[:h.size(0)]
        if self.weight.dtype == torch.float32:
            if self.bias is None:
                return torch.mm(h.float(), self.weight.t(), out=z)
            return torch.addmm(self.bias.float(), h.float(), self.weight.t(), out=z)
        if self.native:  # low-precision GEMM, fp32 logits (as the MLM head's linear_in_fp32 and .float())
            bias = None if self.bias is None else self.bias.to(self.weight.dtype)
            return F.linear(h.to(self.weight.dtype), self.weight, bias).float()
        h32 = h.float()
        for c0, c1, w in self._blocks():
            z[:, c0:c1] = h32 @ w.t()
        return z if self.bias is None else z.add_(self.bias.float())

    def accumulate(self, grad, h, d_hidden, d_weight, d_bias):
        """d_hidden = grad W (this chunk's rows), d_weight += gradᵀ h, d_bias += Σ grad."""
        if d_bias is not None:
            d_bias += grad.sum(0)
        if self.native:
            g, h = grad.to(self.weight.dtype), h.to(self.weight.dtype)
            if d_hidden.dtype == g.dtype:
                torch.mm(g, self.weight, out=d_hidden)
            else:
                d_hidden.copy_(g @ self.weight)
            if d_weight.dtype == g.dtype:
                d_weight.addmm_(g.t(), h)
            else:
                d_weight += g.t() @ h
            return
        h32 = h.float()
        d_hidden.zero_()
        for c0, c1, w in self._blocks():
            d_hidden.addmm_(grad[:, c0:c1], w)
            d_weight[c0:c1].addmm_(grad[:, c0:c1].t(), h32)


class _FusedLinearSoftTargetCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, bias, target, weights, alpha, ignore_index, vocab_size, chunks, ops,
                with_grad):
        n = hidden.size(0)
        v_local = weight.size(0)
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * v_local
        real_local = min(max(vocab_size - vocab_start, 0), v_local)
        token_chunk, vocab_chunk = chunks
        if token_chunk is None:
            token_chunk = max(1, CHUNK_ELEMENTS // max(real_local, 1))
        chunk_stats, chunk_grad = ops or _chunk_ops(hidden.device)
        gemms = _Gemms(weight[:real_local], None if bias is None else bias[:real_local], vocab_chunk)
        valid = target != ignore_index
        w = torch.where(valid, weights.float(), 0.0)
        losses = torch.zeros(n, device=hidden.device)
        nll = torch.zeros(n, device=hidden.device)
        d_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if with_grad else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grad else None
        d_bias = None if bias is None or not with_grad else torch.zeros(bias.shape, dtype=torch.float32,
                                                                         device=bias.device)
        buffers = [torch.empty(min(n, token_chunk), real_local, device=hidden.device)
                   for _ in range(1 if ref_hidden is None else 2)] if real_local else []
        for r0 in range(0, n, token_chunk):
            r1 = min(n, r0 + token_chunk)
            t = target[r0:r1] - vocab_start
            local_t = torch.where((t >= 0) & (t < real_local), t, -1)
            if real_local:
                z = gemms.logits(hidden[r0:r1], buffers[0])
                y = None if ref_hidden is None else gemms.logits(ref_hidden[r0:r1], buffers[1])
                stats = chunk_stats(z, y, local_t)
            else:  # a rank whose shard is all padding: nothing seen
                ninf, zero = torch.full((r1 - r0,), float("-inf"), device=hidden.device), t.new_zeros(r1 - r0).float()
                stats = (ninf, zero, ninf, zero, zero, zero, zero)
            m_z, s_z, m_y, s_y, a, z_t, u = _all_ranks(stats)
            r_term = u / vocab_size if ref_hidden is None else a / s_y
            ok = valid[r0:r1]
            log_partition = s_z.log() + m_z
            losses[r0:r1] = torch.where(ok, log_partition - (1.0 - alpha) * z_t - alpha * r_term, 0.0)
            nll[r0:r1] = torch.where(ok, log_partition - z_t, 0.0)
            if not with_grad:
                continue
            if not real_local:
                d_hidden[r0:r1] = 0.0
                continue
            grad = chunk_grad(z, y, local_t, (m_z, s_z, m_y, s_y), stats, w[r0:r1], alpha, vocab_size)
            gemms.accumulate(grad, hidden[r0:r1], d_hidden[r0:r1], d_weight[:real_local],
                             None if d_bias is None else d_bias[:real_local])
        if with_grad:
            # kept as attributes, not saved tensors: the backward scales them in place, once
            ctx.grads = [d_hidden.to(hidden.dtype), d_weight.to(weight.dtype),
                         None if d_bias is None else d_bias.to(bias.dtype)]
        ctx.mark_non_differentiable(losses, nll)
        return (losses * w).sum(), losses, nll

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if getattr(ctx, "grads", None) is None:
            raise RuntimeError("fused_linear_soft_target_cross_entropy: the gradients were computed in the forward "
                               "(under torch.no_grad, or already used by an earlier backward)")
        grads, ctx.grads = ctx.grads, None
        for g in grads:
            if g is not None:
                g.mul_(grad_loss.to(g.dtype))
        d_hidden, d_weight, d_bias = grads
        return (d_hidden, None, d_weight, d_bias, *(None,) * 8)


def fused_linear_soft_target_cross_entropy(hidden, reference_hidden, weight, bias, target, alpha: float,
                                           vocab_size: int, ignore_index: int = -100, token_weights=None,
                                           token_chunk: int | None = None, vocab_chunk: int = VOCAB_CHUNK,
                                           chunk_ops=None) -> FusedCrossEntropy:
    """Σ_i w_i·(−Σ_v ỹ_iv·log softmax(h_i W^T + b)_v) with ỹ = (1−α)·onehot(target) + α·softmax(h_ref W^T + b)
    (``reference_hidden`` None: α spread uniformly over the first ``vocab_size`` ids), never holding more than a
    [token_chunk, V/tp] block of logits (default: about CHUNK_ELEMENTS). hidden, reference_hidden: [n, H] (the
    reference gets no gradient); weight [V/tp, H] and bias [V/tp] (or None): this rank's vocabulary shard; target
    [n] global ids; token_weights [n] (default 1; ignored tokens count 0). The gradients are computed in the forward
    when autograd will want them. ``chunk_ops``: (stats, grad) per-chunk functions (default: Triton on CUDA, torch
    elsewhere)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if hidden.dim() != 2 or target.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [n, H] with target [n], got {tuple(target.shape)}")
    if token_weights is None:
        token_weights = torch.ones(target.shape, device=hidden.device)
    elif token_weights.shape != target.shape:
        raise ValueError(f"token_weights {tuple(token_weights.shape)} must match target {tuple(target.shape)}")
    ref = None if reference_hidden is None else reference_hidden.detach()
    with_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias))
    return FusedCrossEntropy(*_FusedLinearSoftTargetCE.apply(
        hidden, ref, weight, bias, target, token_weights.detach(), float(alpha), ignore_index, vocab_size,
        (token_chunk, vocab_chunk), chunk_ops, with_grad))
