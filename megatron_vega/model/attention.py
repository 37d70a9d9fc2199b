"""Disentangled self-attention (DeBERTa-v2), heads split across tensor-parallel ranks.

scores(i, j) = [Q_i.K_j + Q_i.Kr_d(i,j) + K_j.Qr_d(i,j)] / sqrt(d * (1 + c2p + p2c))      (method_spec §4.4)

The two relative terms are computed as [s, 2k] products against the (small) relative tables and gathered into
one additive bias with the padding mask. On GPU the softmax(QK^T + bias)V part runs in PyTorch's
scaled_dot_product_attention (memory-efficient kernel, which takes a bias with a gradient). On CPU, SDPA with a
grad-requiring bias or dropout falls back to its math path, and autograd over whole [b, h, s, s] tensors is
memory-bound (each intermediate a fresh 50 MB block at base, page faults included), so the fp32 CPU path is
written out by hand (_CpuAttention): forward and backward per chunk of heads, on a pool of single-threaded
workers; bf16 takes it too (in fp32) where the CPU has no bf16 matrix units, else SDPA.
"""
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from megatron_vega import runtime
from megatron_vega.config import ModelConfig
from megatron_vega.ops.dropout import draw_keep, draw_seed, dropout, dropout_grid


def relative_bias(q, k, pos_key, pos_query, rel_index):
    """c2p + p2c as one [b, h, s, s] bias. q, k: [b, h, s, d]; pos_*: [h, 2k, d] (already scaled) or None."""
    s = q.shape[2]
    index = rel_index.expand(q.shape[0], q.shape[1], s, s)
    bias = None
    if pos_key is not None:  # c2p: Q_i . Kr_delta(i,j)
        bias = torch.gather(torch.matmul(q, pos_key.transpose(-1, -2)), -1, index)
    if pos_query is not None:  # p2c: K_j . Qr_delta(i,j), gathered along the key's row then transposed
        p2c = torch.gather(torch.matmul(k, pos_query.transpose(-1, -2)), -1, index.transpose(-1, -2))
        p2c = p2c.transpose(-1, -2)
        bias = p2c if bias is None else bias + p2c
    return bias


def _dropout_into(out, probs, keep, inv):
    """out = probs * inv * keep."""
    torch.mul(probs, inv, out=out)
    return out.mul_(keep)


_POOLS = {}  # (pid, workers) -> executor: a forked child gets its own (the parent's threads are not in it)


def _init_worker(barrier):
    torch.get_num_threads()  # ATen's lazy per-thread init first, or it would later reset what follows
    torch.set_num_threads(1)  # this thread's OpenMP/MKL team: the pool is the parallelism
    barrier.wait()


def _run_chunks(fn, chunks, workers: int):
    """fn(*chunk) for every chunk: inline when workers <= 1 (each op then uses the intra-op threads), else on a
    pool of single-threaded workers pulling chunks as they free up.
    On a shared machine the pool is the robust choice: an intra-op team waits at every op's barrier for its
    slowest thread (a thread the OS has lent to another process stalls all), hundreds of times per call; pool
    workers only meet once, at the end."""
    if workers <= 1:
        for c in chunks:
            fn(*c)
        return
    pool = _POOLS.get((os.getpid(), workers))
    if pool is None:
        threads = torch.get_num_threads()
        barrier = threading.Barrier(workers + 1)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="vega-attention")
        for _ in range(workers):
            pool.submit(_init_worker, barrier)
        barrier.wait()
        torch.set_num_threads(threads)  # set_num_threads(1) also changed the default of threads started later
        _POOLS[(os.getpid(), workers)] = pool
    inference = torch.is_inference_mode_enabled()

    def task(c):
        with torch.inference_mode() if inference else torch.no_grad():  # grad modes are per thread
            fn(*c)
    futures = [pool.submit(task, c) for c in chunks]
    for future in futures:
        future.result()


class _CpuAttention(torch.autograd.Function):
    """The fp32 CPU core: softmax(scale * QK^T + c2p + p2c + mask) V with dropout, forward and backward by hand,
    in chunks of ``CHUNK_HEADS`` heads of one sequence written into place (gather out=, baddbmm_, softmax out=).
    What it saves (measured at base, b=4, s=512): autograd over whole tensors allocates a fresh 50 MB
    [b, h, s, t] block for every intermediate, and glibc maps each one afresh, so ~40 % of the old path's CPU time
    was page faults; here only the saved probabilities and mask are allocated, per sequence. Chunks run on
    single-threaded workers (see _run_chunks), each drawing its chunk's dropout mask (ops.dropout.draw_keep).
    Takes the fused [3, b, h, s, d] QKV and returns its gradient in one piece (three views would each get a
    zero-filled full-size gradient, summed by autograd). Saved for the backward: the probabilities and a uint8
    keep-mask. c2p is gathered row-wise from [s, 2k] = Q Kr^T; p2c,
    transposed, row-wise from [s, 2k] = K Qr^T, then added transposed (cheaper than gathering [2k, s] = Qr K^T
    along its rows); their backward is a scatter_add into a chunk-sized zero buffer. Deep-prompt keys/values
    (prefix_*, [b, h, P, d]) come first and get no relative bias. ``WORKERS``: see _run_chunks (None: one per
    intra-op thread)."""
    CHUNK_HEADS = 2  # 2 to 12 measured within a few %; 2 was best (and divides the local heads at TP = 2)
    WORKERS = None

    @staticmethod
    def forward(ctx, qkv, prefix_k, prefix_v, pos_key, pos_query, rel_index, mask_bias, dropout_p, scale, save):
        pos_key = None if pos_key is None else pos_key.contiguous()
        pos_query = None if pos_query is None else pos_query.contiguous()
        _, b, h, s, d = qkv.shape
        prefix = 0 if prefix_k is None else prefix_k.shape[2]
        t = prefix + s
        hc = min(h, _CpuAttention.CHUNK_HEADS)
        workers = torch.get_num_threads() if _CpuAttention.WORKERS is None else _CpuAttention.WORKERS
        # Per sequence, not one [b, h, s, t] block: glibc maps blocks above 32 MiB afresh (page faults on every first
        # touch) but recycles smaller freed ones. Without a backward, scores live in a chunk buffer.
        probs = [qkv.new_empty(h, s, t) for _ in range(b)] if save else None
        out = qkv.new_empty(s, b, h, d).permute(1, 2, 0, 3)  # [b, h, s, d] in the [s, b, h*d] layout proj wants
        index, index_t = rel_index, rel_index.t().contiguous()
        # uint8, not bool: x * uint8 runs vectorised, x * bool converts the mask element by element first
        keep = [torch.empty(h, s, t, dtype=torch.uint8) for _ in range(b)] if dropout_p > 0 else None
        threshold, inv = dropout_grid(dropout_p) if dropout_p > 0 else (0, 1.0)
        # one draw of the current (TP-rank-forked) generator seeds every chunk's own: deterministic, per rank
        seed = draw_seed() if dropout_p > 0 else 0
        if mask_bias is not None:
            mask_bias = mask_bias.expand(b, -1, s, t)
        chunks = _chunks(b, h, hc)
        rel_shape = _rel_shape(hc, s, pos_key, pos_query)

        def chunk(i, bi, h0, h1):
            n = h1 - h0
            tmp, sbuf, rbuf = _scratch(qkv, (hc, s, t), None if save else (hc, s, t), rel_shape)
            qc, kc, vc = _qkv_chunk(qkv, prefix_k, prefix_v, bi, h0, h1)
            scores = probs[bi][h0:h1] if save else sbuf[:n]
            rel = scores[:, :, prefix:]
            if pos_key is not None:  # c2p[i, j] = (Q Kr^T)[i, delta(i, j)]
                torch.bmm(qc, pos_key[h0:h1].transpose(1, 2), out=rbuf[:n])
                torch.gather(rbuf[:n], 2, index.expand(n, s, s), out=rel)
            else:
                rel.zero_()
            if pos_query is not None:  # p2c[i, j] = (K Qr^T)[j, delta(i, j)]
                torch.bmm(kc[:, prefix:], pos_query[h0:h1].transpose(1, 2), out=rbuf[:n])
                rel.add_(torch.gather(rbuf[:n], 2, index_t.expand(n, s, s), out=tmp[:n, :, :s]).transpose(1, 2))
            if prefix:
                scores[:, :, :prefix].zero_()
            if mask_bias is not None:  # [b, 1 or h, s, t]
                m = mask_bias[bi]
                scores.add_(m if m.shape[0] == 1 else m[h0:h1])
            scores.baddbmm_(qc, kc.transpose(1, 2), alpha=scale)
            torch.ops.aten._softmax.out(scores, -1, False, out=scores)
            if keep is not None:
                draw_keep(keep[bi][h0:h1], threshold, seed + i)
            dropped = scores if keep is None else _dropout_into(tmp[:n], scores, keep[bi][h0:h1], inv)
            torch.bmm(dropped, vc, out=out[bi, h0:h1])

        _run_chunks(chunk, chunks, workers)
        if save:
            ctx.save_for_backward(qkv, prefix_k, prefix_v, pos_key, pos_query, index, index_t, *probs, *(keep or ()))
            ctx.scale, ctx.inv, ctx.hc, ctx.workers = scale, inv, hc, workers
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, prefix_k, prefix_v, pos_key, pos_query, index, index_t, *saved = ctx.saved_tensors
        b = qkv.shape[1]
        probs, keep = saved[:b], saved[b:] or None
        scale, inv, hc = ctx.scale, ctx.inv, ctx.hc
        _, b, h, s, d = qkv.shape
        prefix = 0 if prefix_k is None else prefix_k.shape[2]
        t = prefix + s
        gqkv = torch.empty_like(qkv)  # the strides of qkv: for the module's view, the linear's [s, b, 3hd] layout
        gpre_k, gpre_v = (None, None) if prefix_k is None else (torch.empty_like(prefix_k), torch.empty_like(prefix_v))
        # table grads per sequence, summed in a fixed order at the end (deterministic whichever worker ran what)
        gpk = None if pos_key is None else qkv.new_empty(b, *pos_key.shape)
        gpq = None if pos_query is None else qkv.new_empty(b, *pos_query.shape)
        rel_shape = _rel_shape(hc, s, pos_key, pos_query)

        def chunk(i, bi, h0, h1):
            n = h1 - h0
            g, tmp, rbuf, gk, gv = _scratch(qkv, (hc, s, t), (hc, s, t), rel_shape,
                                            *([(hc, t, d)] * 2 if prefix else [None, None]))
            g = g[:n]
            qc, kc, vc = _qkv_chunk(qkv, prefix_k, prefix_v, bi, h0, h1)
            go, pc = grad_out[bi, h0:h1], probs[bi][h0:h1]
            gq = gqkv[0, bi, h0:h1]
            gk, gv = (gqkv[1, bi, h0:h1], gqkv[2, bi, h0:h1]) if not prefix else (gk[:n], gv[:n])
            kp = None if keep is None else keep[bi][h0:h1]
            dropped = pc if kp is None else _dropout_into(tmp[:n], pc, kp, inv)
            torch.bmm(dropped.transpose(1, 2), go, out=gv)
            torch.bmm(go, vc.transpose(1, 2), out=g)
            if kp is not None:
                g.mul_(inv).mul_(kp)
            torch.ops.aten._softmax_backward_data.out(g, pc, -1, pc.dtype, grad_input=g)
            grel = g[:, :, prefix:]
            if pos_key is not None:  # c2p: d/d(Q Kr^T) = the score grad scattered back onto the gathered columns
                gc = rbuf[:n].zero_().scatter_add_(2, index.expand(n, s, s), grel)
                torch.bmm(gc, pos_key[h0:h1], out=gq)
                torch.bmm(gc.transpose(1, 2), qc, out=gpk[bi, h0:h1])
                gq.baddbmm_(g, kc, alpha=scale)
            else:
                torch.bmm(g, kc, out=gq).mul_(scale)
            if pos_query is not None:  # p2c: the same on K Qr^T, with the transposed score grad
                gp = rbuf[:n].zero_().scatter_add_(2, index_t.expand(n, s, s), grel.transpose(1, 2))
                torch.bmm(gp, pos_query[h0:h1], out=gk[:, prefix:])
                torch.bmm(gp.transpose(1, 2), kc[:, prefix:], out=gpq[bi, h0:h1])
                if prefix:
                    gk[:, :prefix].zero_()
                gk.baddbmm_(g.transpose(1, 2), qc, alpha=scale)
            else:
                torch.bmm(g.transpose(1, 2), qc, out=gk).mul_(scale)
            if prefix:
                gpre_k[bi, h0:h1], gqkv[1, bi, h0:h1] = gk[:, :prefix], gk[:, prefix:]
                gpre_v[bi, h0:h1], gqkv[2, bi, h0:h1] = gv[:, :prefix], gv[:, prefix:]

        _run_chunks(chunk, _chunks(b, h, hc), ctx.workers)
        return gqkv, gpre_k, gpre_v, *(None if x is None else x.sum(0) for x in (gpk, gpq)), *(None,) * 5


def _chunks(b: int, h: int, hc: int):
    return [(i, bi, h0, min(h, h0 + hc)) for i, (bi, h0) in enumerate((bi, h0) for bi in range(b)
                                                                      for h0 in range(0, h, hc))]


def _rel_shape(hc: int, s: int, pos_key, pos_query):
    rows = [x.shape[1] for x in (pos_key, pos_query) if x is not None]
    return (hc, s, max(rows)) if rows else None


_LOCAL = threading.local()


def _scratch(like, *shapes):
    """This thread's chunk buffers for these shapes, kept from call to call: a fresh buffer costs a page fault per
    4 KiB on first touch (~1 ms per MB on this VM). A few sets per thread (forward and backward differ)."""
    cache = _LOCAL.__dict__.setdefault("buffers", {})
    key = (like.dtype, shapes)
    if key not in cache:
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[key] = [None if shape is None else like.new_empty(shape) for shape in shapes]
    return cache[key]


def _qkv_chunk(qkv, prefix_k, prefix_v, bi: int, h0: int, h1: int):
    q, k, v = qkv[0, bi, h0:h1], qkv[1, bi, h0:h1], qkv[2, bi, h0:h1]
    if prefix_k is not None:
        k, v = torch.cat([prefix_k[bi, h0:h1], k], dim=1), torch.cat([prefix_v[bi, h0:h1], v], dim=1)
    return q, k, v


def disentangled_attention(q, k, v, pos_key, pos_query, rel_index, mask_bias, dropout_p: float, scale: float,
                           prefix=None, qkv=None):
    """softmax((QK^T + c2p + p2c) * scale + mask) V, with the softmax accumulated in fp32. mask_bias
    [b, 1, s, P + s] or None (no padding). ``prefix``: deep-prompt (keys, values) [b, h, P, d] put in front of the
    tokens' (P-tuning v2); they have no position, so their relative-position bias is zero. ``qkv``: the
    [3, b, h, s, d] tensor q, k, v are views of, if any (the CPU path then returns its gradient in one piece)."""
    scaled = lambda t: None if t is None else t * scale  # noqa: E731  (the small [h, 2k, d] tables, not Q)
    if q.device.type == "cpu" and (q.dtype == torch.float32 or not runtime.low_precision_gemm_native(q.dtype)):
        qkv = torch.stack([q, k, v]) if qkv is None else qkv
        mask_bias = None if mask_bias is None else mask_bias.to(q.dtype)
        args = (qkv, *(prefix or (None, None)), scaled(pos_key), scaled(pos_query))
        save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in args)
        return runtime.in_fp32(_CpuAttention.apply, *args, rel_index, mask_bias, dropout_p, scale, save)
    bias = relative_bias(q, k, scaled(pos_key), scaled(pos_query), rel_index)
    if prefix is not None:
        k, v = torch.cat([prefix[0], k], dim=2), torch.cat([prefix[1], v], dim=2)
        bias = None if bias is None else F.pad(bias, (prefix[0].shape[2], 0))
    if mask_bias is not None:
        mask_bias = mask_bias.to(q.dtype)
        bias = mask_bias if bias is None else bias + mask_bias
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


class DisentangledSelfAttention(torch.nn.Module):
    """Fused QKV (column-parallel, rows laid out [heads, 3, d]) -> disentangled attention -> output projection
    (row-parallel). Position projections reuse Q/K (share_att_key) or have their own column-parallel weights."""

    def __init__(self, cfg: ModelConfig, mp_config, init_method, output_init_method):
        super().__init__()
        tp = mp_config.tensor_model_parallel_size
        self.heads = cfg.num_attention_heads // tp
        self.head_dim = cfg.kv_channels
        self.c2p, self.p2c = cfg.pos_terms
        self.share_att_key = cfg.share_att_key
        self.scale = 1.0 / math.sqrt(self.head_dim * (1 + self.c2p + self.p2c))
        self.attention_dropout = cfg.attention_dropout
        self.hidden_dropout = cfg.hidden_dropout
        self.recompute_core = False
        proj = cfg.num_attention_heads * cfg.kv_channels
        self.linear_qkv = tensor_parallel.ColumnParallelLinear(
            cfg.hidden_size, 3 * proj, config=mp_config, init_method=init_method, bias=True, gather_output=False)
        if not cfg.share_att_key:
            if self.c2p:
                self.linear_pos_key = tensor_parallel.ColumnParallelLinear(
                    cfg.hidden_size, proj, config=mp_config, init_method=init_method, bias=True)
            if self.p2c:
                self.linear_pos_query = tensor_parallel.ColumnParallelLinear(
                    cfg.hidden_size, proj, config=mp_config, init_method=init_method, bias=True)
        self.linear_proj = tensor_parallel.RowParallelLinear(
            proj, cfg.hidden_size, config=mp_config, init_method=output_init_method, bias=True,
            input_is_parallel=True, skip_bias_add=False)

    def _position_projections(self, rel_embeddings):
        """[2k, H] relative table -> (Kr, Qr), each [heads_local, 2k, d] (or None when the term is off)."""
        rel = copy_to_tensor_model_parallel_region(rel_embeddings)  # its grad sums over this rank's heads
        rows = rel.shape[0]
        if self.share_att_key:  # only the Q and K rows of the fused weight (the V third would be unused)
            weight = self.linear_qkv.weight.view(self.heads, 3, self.head_dim, -1)[:, :2]
            bias = self.linear_qkv.bias.view(self.heads, 3, self.head_dim)[:, :2]
            qk = runtime.in_fp32(F.linear, rel, weight.reshape(-1, weight.shape[-1]), bias.reshape(-1))
            qk = qk.view(rows, self.heads, 2, self.head_dim)
            pos_query, pos_key = qk[:, :, 0], qk[:, :, 1]
        else:
            pos_key = pos_query = None
            if self.c2p:
                pos_key = runtime.in_fp32(F.linear, rel, self.linear_pos_key.weight, self.linear_pos_key.bias)
            if self.p2c:
                pos_query = runtime.in_fp32(F.linear, rel, self.linear_pos_query.weight,
                                            self.linear_pos_query.bias)
            pos_key, pos_query = [None if t is None else t.view(rows, self.heads, self.head_dim)
                                  for t in (pos_key, pos_query)]
        as_heads = lambda t: None if t is None else t.permute(1, 0, 2)  # noqa: E731
        return as_heads(pos_key) if self.c2p else None, as_heads(pos_query) if self.p2c else None

    def _core(self, qkv, pos_key, pos_query, rel_index, mask_bias, prefix_key, prefix_value):
        p = self.attention_dropout if self.training else 0.0
        prefix = None if prefix_key is None else (prefix_key, prefix_value)
        with tensor_parallel.get_cuda_rng_tracker().fork():  # heads differ per TP rank, so does their dropout
            return disentangled_attention(qkv[0], qkv[1], qkv[2], pos_key, pos_query, rel_index, mask_bias, p,
                                          self.scale, prefix, qkv=qkv)

    def forward(self, hidden, rel_embeddings, rel_index, mask_bias, prefix=None):
        """hidden: [s, b, H] (sequence-parallel chunk when SP is on) -> [s, b, H]. ``prefix``: this rank's heads
        of a deep prompt, (keys, values) each [b, heads, P, d]."""
        qkv, _ = self.linear_qkv(hidden)
        s, b = qkv.shape[:2]
        qkv = qkv.view(s, b, self.heads, 3, self.head_dim).permute(3, 1, 2, 0, 4)  # [3, b, h, s, d]
        # pos_dropout: per layer, on the replicated table, so the default RNG (identical on TP ranks)
        rel = dropout(rel_embeddings, self.hidden_dropout, self.training)
        pos_key, pos_query = self._position_projections(rel)
        core_args = (qkv, pos_key, pos_query, rel_index, mask_bias, *(prefix or (None, None)))
        if self.recompute_core:  # (the checkpoint function saves tensors, not tuples: the prefix goes as two)
            context = tensor_parallel.checkpoint(self._core, False, *core_args)
        else:
            context = self._core(*core_args)
        context = context.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
        out, _ = self.linear_proj(context)
        return out
