"""Soft-target cross entropy over vocab-parallel logits: self-evolution's token-specific label smoothing (TLS).

Per token: loss = −Σ_v ỹ_v·log p_v with p = softmax(z) (student logits z), ỹ = (1−α)·onehot(t) + α·r, and r either
softmax(y) of the reference logits y (TLS, docs/self_evolution.md) or uniform over the K real vocabulary entries (the
vanilla label-smoothing baseline). With ẑ = z − M_z (M_z the max over the GLOBAL vocabulary) and Σ_v r_v = 1:

    loss = log S_z − (1−α)·ẑ_t − α·Σ_v r_v·ẑ_v,      S_z = Σ_v exp(ẑ_v)
    Σ_v r_v·ẑ_v = Σ_v exp(y_v − M_y)·ẑ_v / S_y           (TLS, S_y = Σ_v exp(y_v − M_y))
                = Σ_{v<K} ẑ_v / K                        (uniform; K counts the real, unpadded vocabulary)

so tensor-parallel ranks exchange per-token scalars only: the maxima (all-reduce MAX), then the partial sums S_z,
S_y, Σ exp(y − M_y)·ẑ and ẑ_t (all-reduce SUM). megatron-core's own label_smoothing averages over the local shard
only and is wrong at TP>1 (docs/megatron_core_cpu.md); this op never uses it.

Memory. Rows are processed in chunks with three fp32 [rows, V/tp] scratch buffers allocated once (``chunk_size``
rows; by default 32 MiB each), so the working set does not grow with the number of tokens, and ỹ / r are never
materialized for the batch; at TP>1 each chunk does two small all-reduces (maxima, then partial sums). The forward
writes each chunk's gradient direction softmax(z) − ỹ into one [n, V/tp] buffer in the input dtype; it is the only
tensor saved, and backward scales it by the incoming gradient in place. That buffer is the size of the gradient
backward must return anyway. The alternative — saving student and reference logits and recomputing both softmaxes
in backward — keeps two [n, V/tp] tensors alive between forward and backward instead of one and does the exps
twice. Like megatron-core's vocab_parallel_cross_entropy, backward can run only once (a second backward through a
retained graph fails autograd's in-place check). Without grad on the student, no buffer is made.

Padded vocabulary entries arrive as PADDED_VOCAB_LOGIT (−1e30): exp gives exactly 0 there, so they carry no
probability, no gradient, and 0·(−1e30) = 0 in the reference term; ẑ is clamped to the finite range so −inf logits
(e.g. −1e30 cast to fp16) do not turn that product into NaN.
"""
import torch
import torch.distributed as dist
from megatron.core import parallel_state

# Default rows per chunk: ~8M logits, 32 MiB per fp32 scratch. Fewer, larger chunks mean fewer kernel launches
# (GPU) and thread-pool synchronizations (CPU, costly on shared cores); the scratch stays a fixed, small cost.
CHUNK_ELEMENTS = 1 << 23
_FP32_MIN = torch.finfo(torch.float32).min


def _shifted(x, shift, out):
    """out = x − shift in fp32. Not torch.sub(x, shift, out=out) for low-precision x: on the CPU, mixed-dtype
    arithmetic first copies x into a new fp32 temporary."""
    if x.dtype == torch.float32:
        return torch.sub(x, shift, out=out)
    return out.copy_(x).sub_(shift)


def _chunk(z, y, t, alpha, ignore_index, vocab_start, real_local, vocab_size, z_work, y_work, prod_work, grad_out):
    """Per-token losses of one chunk of rows. *_work: fp32 scratch shaped like the chunk (z_work may be grad_out
    itself); grad_out (or None): receives softmax(z) − ỹ, zero on ignored rows."""
    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rows = torch.arange(z.size(0), device=z.device)
    valid = t != ignore_index
    local_t = t - vocab_start
    in_shard = valid & (local_t >= 0) & (local_t < z.size(1))
    local_t = torch.where(in_shard, local_t, 0)

    maxes = torch.stack([z.amax(-1).float()] + ([] if y is None else [y.amax(-1).float()]))
    if tp > 1:
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=group)
    zh = _shifted(z, maxes[0, :, None], z_work).clamp_(min=_FP32_MIN)
    sums = torch.zeros(4, z.size(0), dtype=torch.float32, device=z.device)  # S_z, S_y, Σ r-term, ẑ_t
    sums[3] = torch.where(in_shard, zh[rows, local_t], 0.0)
    if y is None:
        sums[2] = zh[:, :real_local].sum(-1)
    else:
        ey = _shifted(y, maxes[1, :, None], y_work).exp_()
        sums[1] = ey.sum(-1)
        sums[2] = torch.mul(zh, ey, out=prod_work).sum(-1)  # Σ_v exp(y_v − M_y)·ẑ_v
    ez = zh.exp_()
    sums[0] = ez.sum(-1)
    if tp > 1:
        dist.all_reduce(sums, group=group)
    s_z, s_y, r_term, z_t = sums
    r_term = r_term / (s_y if y is not None else vocab_size)
    loss = torch.where(valid, s_z.log() - (1.0 - alpha) * z_t - alpha * r_term, 0.0)
    if grad_out is not None:
        keep = valid.float()  # folded into the row scales: ignored rows come out 0 without another pass
        ez.mul_((keep / s_z)[:, None])
        if y is None:
            ez[:, :real_local].sub_((alpha / vocab_size) * keep[:, None])
        else:
            ez.addcmul_(ey, (-alpha * keep / s_y)[:, None])
        ez[rows[in_shard], local_t[in_shard]] -= 1.0 - alpha
        if grad_out is not ez:
            grad_out.copy_(ez)
    return loss


class SmoothedVocabParallelCrossEntropy(torch.autograd.Function):
    """Arguments as ``smoothed_vocab_parallel_cross_entropy``; ``reference`` None selects uniform smoothing."""

    @staticmethod
    def forward(ctx, student, reference, target, alpha, ignore_index, vocab_size, chunk_size):
        v_local = student.size(-1)
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * v_local
        real_local = min(max(vocab_size - vocab_start, 0), v_local) if vocab_size is not None else v_local
        z = student.reshape(-1, v_local)
        y = None if reference is None else reference.reshape(-1, v_local)
        t = target.reshape(-1)
        n = z.size(0)
        grad = torch.empty_like(z) if ctx.needs_input_grad[0] else None
        loss = torch.empty(n, dtype=torch.float32, device=z.device)
        step = max(1, min(n, chunk_size or CHUNK_ELEMENTS // v_local))
        # Scratch allocated once and reused by every chunk: per-chunk allocations would page-fault each time and
        # fragment the CPU heap. An fp32 gradient chunk is its own z scratch, which saves a copy.
        scratch = lambda: torch.empty(step, v_local, dtype=torch.float32, device=z.device)  # noqa: E731
        grad_is_scratch = grad is not None and grad.dtype == torch.float32
        z_work = None if grad_is_scratch else scratch()
        y_work, prod_work = (None, None) if y is None else (scratch(), scratch())
        for a in range(0, n, step):
            b = min(a + step, n)
            out = None if grad is None else grad[a:b]
            loss[a:b] = _chunk(z[a:b], None if y is None else y[a:b], t[a:b], alpha, ignore_index, vocab_start,
                               real_local, vocab_size, out if grad_is_scratch else z_work[:b - a],
                               None if y is None else y_work[:b - a], None if y is None else prod_work[:b - a], out)
        ctx.shape, ctx.step = student.shape, step
        ctx.save_for_backward(grad)
        return loss.view(target.shape)

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        g = grad_loss.reshape(-1, 1).float()
        if grad.dtype == torch.float32:
            grad.mul_(g)
        else:  # fp32 math, one rounding; staged through one chunk of scratch (see _shifted)
            work = torch.empty(ctx.step, grad.size(1), dtype=torch.float32, device=grad.device)
            for a in range(0, grad.size(0), ctx.step):
                chunk = grad[a:a + ctx.step]
                chunk.copy_(work[:len(chunk)].copy_(chunk).mul_(g[a:a + ctx.step]))
        return grad.view(ctx.shape), None, None, None, None, None, None


def smoothed_vocab_parallel_cross_entropy(student_logits: torch.Tensor, reference_logits: torch.Tensor | None,
                                          target: torch.Tensor, alpha: float, ignore_index: int = -100,
                                          chunk_size: int | None = None, *,
                                          vocab_size: int | None = None) -> torch.Tensor:
    """Per-token −Σ_v ỹ_v·log softmax(student)_v, ỹ = (1−α)·onehot(target) + α·r, over vocab-parallel logits.

    student_logits: [..., V/tp], this rank's vocabulary shard (any float dtype; math in fp32, grad in its dtype).
    reference_logits: same shape, r = softmax of them over the global vocabulary (no gradient flows into them);
        None selects vanilla label smoothing: r uniform over the first ``vocab_size`` global ids (padding excluded).
    target: [...] global vocabulary ids; ``ignore_index`` positions give loss 0 and gradient 0.
    chunk_size: rows per chunk (default: ~8M logits per chunk). Returns fp32 losses shaped like ``target``.
    With alpha = 0 this equals megatron-core's ``tensor_parallel.vocab_parallel_cross_entropy``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if reference_logits is None and vocab_size is None:
        raise ValueError("uniform label smoothing (reference_logits=None) needs vocab_size")
    if reference_logits is not None and reference_logits.shape != student_logits.shape:
        raise ValueError(f"reference logits {tuple(reference_logits.shape)} != student logits "
                         f"{tuple(student_logits.shape)}")
    if target.shape != student_logits.shape[:-1]:
        raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(student_logits.shape)}")
    reference = None if reference_logits is None else reference_logits.detach()
    return SmoothedVocabParallelCrossEntropy.apply(student_logits, reference, target, float(alpha), ignore_index,
                                                   vocab_size, chunk_size)
