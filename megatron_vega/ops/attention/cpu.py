"""The hand-written CPU attention core: softmax(scale * QK^T + c2p + p2c + mask) V with dropout, forward and backward
written out per chunk of heads of one sequence, on a pool of single-threaded workers.

Why it exists: on a CPU, torch's SDPA with a bias that needs a gradient (or with dropout) falls back to its math path,
and autograd over whole [b, h, s, t] tensors is memory-bound: every intermediate is a fresh large block whose pages
are faulted in on first touch. Writing the chunks into place (gather out=, baddbmm_, softmax out=) and saving only the
probabilities and the dropout mask avoids that. Measurements: BENCHMARKS.md, "Attention cores (CPU)". The formula
and the mask forms: docs/attention.md.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from megatron_vega import runtime
from megatron_vega.ops.attention.support import CoreSupport
from megatron_vega.ops.dropout import draw_keep, draw_seed, dropout_grid


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
    """The fp32 CPU core, in chunks of ``CHUNK_HEADS`` heads of one sequence written into place. Only the
    probabilities and a uint8 keep-mask are saved, per sequence (whole [b, h, s, t] intermediates would each be a
    freshly mapped block). Chunks run on single-threaded workers (see _run_chunks), each drawing its chunk's dropout
    mask (ops.dropout.draw_keep). Takes the fused [3, b, h, s, d] QKV and returns its gradient in one piece (three
    views would each get a zero-filled full-size gradient, summed by autograd). c2p is gathered row-wise from
    [s, 2k] = Q Kr^T; p2c, transposed, row-wise from [s, 2k] = K Qr^T, then added transposed (cheaper than gathering
    [2k, s] = Qr K^T along its rows); their backward is a scatter_add into a chunk-sized zero buffer. ``rel_index``:
    the shared [s, s] index, or one per sequence [b, s, s] (per-sample positions). ``mask_bias``: additive,
    [b, 1 or h, s, t] or None. Deep-prompt keys/values (prefix_*, [b, h, P, d]) come first and get no relative
    bias. ``WORKERS``: see _run_chunks (None: one per intra-op thread)."""
    CHUNK_HEADS = 2  # the best of the sizes measured (BENCHMARKS.md), and it divides the local heads at TP = 2
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
        index, index_t = rel_index, rel_index.transpose(-1, -2).contiguous()
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
            idx, idx_t = _sample_index(index, index_t, bi)
            if pos_key is not None:  # c2p[i, j] = (Q Kr^T)[i, delta(i, j)]
                torch.bmm(qc, pos_key[h0:h1].transpose(1, 2), out=rbuf[:n])
                torch.gather(rbuf[:n], 2, idx.expand(n, s, s), out=rel)
            else:
                rel.zero_()
            if pos_query is not None:  # p2c[i, j] = (K Qr^T)[j, delta(i, j)]
                torch.bmm(kc[:, prefix:], pos_query[h0:h1].transpose(1, 2), out=rbuf[:n])
                rel.add_(torch.gather(rbuf[:n], 2, idx_t.expand(n, s, s), out=tmp[:n, :, :s]).transpose(1, 2))
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
            idx, idx_t = _sample_index(index, index_t, bi)
            if pos_key is not None:  # c2p: d/d(Q Kr^T) = the score grad scattered back onto the gathered columns
                gc = rbuf[:n].zero_().scatter_add_(2, idx.expand(n, s, s), grel)
                torch.bmm(gc, pos_key[h0:h1], out=gq)
                torch.bmm(gc.transpose(1, 2), qc, out=gpk[bi, h0:h1])
                gq.baddbmm_(g, kc, alpha=scale)
            else:
                torch.bmm(g, kc, out=gq).mul_(scale)
            if pos_query is not None:  # p2c: the same on K Qr^T, with the transposed score grad
                gp = rbuf[:n].zero_().scatter_add_(2, idx_t.expand(n, s, s), grel.transpose(1, 2))
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


def _sample_index(index, index_t, bi: int):
    """The [s, s] index (and its transpose) of sequence ``bi``: the shared one, or its own row of a per-sample one."""
    return (index, index_t) if index.dim() == 2 else (index[bi], index_t[bi])


def _chunks(b: int, h: int, hc: int):
    return [(i, bi, h0, min(h, h0 + hc)) for i, (bi, h0) in enumerate((bi, h0) for bi in range(b)
                                                                      for h0 in range(0, h, hc))]


def _rel_shape(hc: int, s: int, pos_key, pos_query):
    rows = [x.shape[1] for x in (pos_key, pos_query) if x is not None]
    return (hc, s, max(rows)) if rows else None


_LOCAL = threading.local()


def _scratch(like, *shapes):
    """This thread's chunk buffers for these shapes, kept from call to call: a fresh buffer costs a page fault per
    4 KiB on first touch. A few sets per thread (forward and backward differ)."""
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


class CpuCore:
    """The hand-written core behind the common core interface (ops/attention/__init__.py). Low-precision inputs
    are computed in fp32 (runtime.in_fp32) where the CPU has no matrix units for them."""
    name = "cpu"
    support = CoreSupport(device_types=frozenset({"cpu"}),
                          dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}),
                          per_sample_positions=True, masks=True, prefix=True, dropout=True)

    def preferred(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Faster than SDPA on a CPU in fp32, and in low precision where the GEMMs would be emulated anyway."""
        return dtype == torch.float32 or not runtime.low_precision_gemm_native(dtype)

    def __call__(self, qkv, prefix_key, prefix_value, pos_key, pos_query, rel_index, mask_bias, dropout_p: float,
                 scale: float):
        mask_bias = None if mask_bias is None else mask_bias.to(qkv.dtype)
        args = (qkv, prefix_key, prefix_value, pos_key, pos_query)
        save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in args)
        return runtime.in_fp32(_CpuAttention.apply, *args, rel_index, mask_bias, dropout_p, scale, save)
