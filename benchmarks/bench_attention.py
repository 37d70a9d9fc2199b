"""Disentangled attention alone, forward + backward: ours vs Hugging Face, same shape, dropout 0.1, train mode.

Candidates (same work: Q/K/V projections, relative-table projections, c2c + c2p + p2c scores, masked softmax,
dropout, PV, output projection):
  * ``ours``: megatron_vega.model.attention.DisentangledSelfAttention (fused QKV, ColumnParallel/RowParallel at TP=1;
    the attention core ``--attention-backend auto`` picks: on CPU the chunked core of ops/attention/cpu.py (bf16
    computed in fp32 where the CPU has no bf16 matrix units), else ops/attention/sdpa.py, c2p/p2c gathered into one
    bias for SDPA), input [s, b, H].
  * ``hf``: transformers' DisentangledSelfAttention followed by an nn.Linear(H, H) (the output dense that HF keeps in
    DebertaV2SelfOutput and ours keeps in the module), input [b, s, H].
  * ``ours_core``: that attention core alone on precomputed q, k, v (views of one fused tensor, as in the module)
    and position tables (informational: how much of ours is the score/softmax core).
The relative index, the pairwise mask and the LayerNorm'd relative table are built once outside the timed call,
as each encoder does once per forward. Precision options as in bench_step.py.
"""
import argparse
import contextlib
import math
import os
import sys

import common
import torch

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig, model_preset
from megatron_vega.convert.hf_mapping import hf_config_dict


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--hf-bf16", default="autocast", choices=["autocast", "weights"])
    p.add_argument("--ours-bf16", default="weights", choices=["weights", "autocast"])
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--profile", choices=["ours", "hf", "ours_core"])
    p.add_argument("--json")
    p.add_argument("--malloc", default="default", choices=["default", "tuned"])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--memory-probe", choices=["ours", "hf", "ours_core"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def autocast(on: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def shared_inputs(cfg, args):
    torch.manual_seed(args.seed)
    b, s, h = args.batch, args.seq, cfg.hidden_size
    rel = torch.nn.functional.layer_norm(torch.randn(2 * cfg.attention_span, h) * 0.02, (h,))
    return dict(hidden=torch.randn(b, s, h), rel=rel, grad=torch.randn(b, s, h))


def build_hf(cfg, args, x):
    from transformers import DebertaV2Config
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention, build_relative_position
    hc = DebertaV2Config(**hf_config_dict(cfg))
    attn, dense = DisentangledSelfAttention(hc).train(), torch.nn.Linear(cfg.hidden_size, cfg.hidden_size)
    weights = args.dtype == "bf16" and args.hf_bf16 == "weights"
    dt = torch.bfloat16 if weights else torch.float32
    attn.to(dt), dense.to(dt)
    use_autocast = args.dtype == "bf16" and not weights
    hidden = x["hidden"].to(dt).requires_grad_()
    rel = x["rel"].to(dt).requires_grad_()
    b, s = hidden.shape[:2]
    mask = torch.ones(b, s, dtype=torch.long)
    mask = mask[:, None, None, :] * mask[:, None, :, None]  # HF's get_attention_mask: [b, 1, s, s]
    rel_pos = build_relative_position(hidden, hidden, bucket_size=hc.position_buckets,
                                      max_position=attn.max_relative_positions)
    grad = x["grad"].to(dt)

    def call():
        with autocast(use_autocast):
            ctx, _ = attn(hidden, mask, relative_pos=rel_pos, rel_embeddings=rel)
            out = dense(ctx)
        out.backward(grad.to(out.dtype))
        hidden.grad = rel.grad = None
        for p in (*attn.parameters(), *dense.parameters()):
            p.grad = None
    return call


def _ours_setup(cfg, args):
    from megatron_vega.model.build import transformer_config
    from megatron_vega.model.relative_position import relative_index
    runtime.init_distributed()
    runtime.init_model_parallel(1, 1, seed=args.seed)
    weights = args.dtype == "bf16" and args.ours_bf16 == "weights"
    tc = transformer_config(cfg, ParallelConfig(), "bf16" if weights else "fp32")
    dt = torch.bfloat16 if weights else torch.float32
    index = relative_index(args.seq, cfg.position_buckets, cfg.max_relative, cfg.attention_span, "cpu")
    mask_bias = None  # full-length sequences: VegaModel.encode passes no mask (HF still fills its [b,1,s,s] mask)
    return tc, dt, weights, index, mask_bias


def build_ours(cfg, args, x):
    from megatron_vega.model.attention import DisentangledSelfAttention
    tc, dt, weights, index, mask_bias = _ours_setup(cfg, args)
    init = lambda w: torch.nn.init.normal_(w, std=cfg.init_method_std)  # noqa: E731
    attn = DisentangledSelfAttention(cfg, tc, init, init).to(dt).train()
    use_autocast = args.dtype == "bf16" and not weights
    hidden = x["hidden"].transpose(0, 1).contiguous().to(dt).requires_grad_()  # [s, b, H]
    rel = x["rel"].to(dt).requires_grad_()
    grad = x["grad"].transpose(0, 1).contiguous().to(dt)

    def call():
        with autocast(use_autocast):
            out = attn(hidden, rel, index, mask_bias)
        out.backward(grad.to(out.dtype))
        hidden.grad = rel.grad = None
        for p in attn.parameters():
            p.grad = None
    return call


def build_ours_core(cfg, args, x):
    from megatron_vega.ops.attention import select_core
    tc, dt, weights, index, mask_bias = _ours_setup(cfg, args)
    core = select_core(cfg.attention_backend, runtime.device(), dt)
    b, s, heads, d, span2 = args.batch, args.seq, cfg.num_attention_heads, cfg.kv_channels, 2 * cfg.attention_span
    gen = torch.Generator().manual_seed(args.seed)
    # Q/K/V as the module has them: views of the fused projection's [s, b, heads, 3, d] output
    fused = torch.randn(s, b, heads, 3, d, generator=gen).to(dt).requires_grad_()
    pk, pq = (torch.randn(heads, span2, d, generator=gen).to(dt).requires_grad_() for _ in range(2))
    grad = torch.randn(b, heads, s, d, generator=gen).to(dt)
    scale = 1.0 / math.sqrt(d * 3)
    use_autocast = args.dtype == "bf16" and not weights

    def call():
        qkv = fused.permute(3, 1, 2, 0, 4)  # [3, b, heads, s, d]
        with autocast(use_autocast):
            out = core(qkv, None, None, pk * scale, pq * scale, index, mask_bias, cfg.attention_dropout, scale)
        out.backward(grad.to(out.dtype))
        for t in (fused, pk, pq):
            t.grad = None
    return call


BUILDERS = {"ours": build_ours, "hf": build_hf, "ours_core": build_ours_core}


def attention_flops(cfg, b: int, s: int) -> float:
    """fwd + bwd (3 x fwd) matrix FLOPs of the attention module (projections, scores, PV, position terms)."""
    h, p, span2 = cfg.hidden_size, cfg.num_attention_heads * cfg.kv_channels, 2 * cfg.attention_span
    terms = sum(cfg.pos_terms)
    fwd = 2 * (b * s * 4 * h * p + b * 2 * s * s * p + b * terms * s * span2 * p + terms * span2 * h * p)
    return 3.0 * fwd


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.malloc == "tuned":
        common.tune_malloc()
    cfg = model_preset(args.preset, hidden_dropout=0.1, attention_dropout=0.1)
    x = shared_inputs(cfg, args)
    if args.memory_probe:
        call = BUILDERS[args.memory_probe](cfg, args, x)
        common.reset_peak_rss()
        rss = common.rss_bytes()
        for _ in range(2):
            call()
        common.report_memory(rss)
        return
    if args.profile:
        from torch.profiler import profile
        call = BUILDERS[args.profile](cfg, args, x)
        call()
        with profile() as prof:
            call()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return
    record = common.machine_record()
    sampler = common.PeakSampler(common.DTYPES[args.dtype])
    sampler()
    memory = {}
    if not args.no_memory:  # fresh subprocesses, before this process holds the candidates
        fwd = [a for a in argv if a != "--no-memory"]
        for opt in ("--json", "--repeats", "--profile"):
            if opt in fwd:
                i = fwd.index(opt)
                del fwd[i:i + 2]
        memory = {name: common.probe_memory(os.path.abspath(__file__), name, fwd) for name in BUILDERS}
    calls = {name: build(cfg, args, x) for name, build in BUILDERS.items()}
    timing = common.time_alternating(calls, args.repeats, args.warmup, between=sampler)
    sampler()
    peak = sampler.summary()
    flops = attention_flops(cfg, args.batch, args.seq)
    results = {name: dict(time_s=t, gflops=flops / t["median"] / 1e9, memory=memory.get(name))
               for name, t in timing.items()}
    res = dict(bench="attention", machine=record, preset=args.preset, dtype=args.dtype, batch=args.batch, seq=args.seq,
               hf_bf16=args.hf_bf16, ours_bf16=args.ours_bf16, repeats=args.repeats, gemm_peak=peak, malloc=args.malloc,
               module_gflop=flops / 1e9, results=results,
               speedup_median=timing["hf"]["median"] / timing["ours"]["median"],
               speedup_best=timing["hf"]["min"] / timing["ours"]["min"],
               speedup_cpu=timing["hf"]["cpu"]["median"] / timing["ours"]["cpu"]["median"])
    print(f"\nattention {args.preset} {args.dtype} batch {args.batch} x seq {args.seq}: "
          f"{res['module_gflop']:.1f} GFLOP per fwd+bwd (module), GEMM peak {peak['gflops']:.1f} GFLOP/s")
    print(table(res))
    res["command"] = ("python benchmarks/bench_attention.py "
                      + " ".join(a for a in argv if a != args.json and a != "--json"))
    common.write_json(args.json, res)


def table(res: dict) -> str:
    rows = ["| candidate | fwd+bwd ms (min / median / max) | CPU ms (median) | GFLOP/s (module FLOPs) | peak RSS GiB |"
            " step peak GiB |", "|---|---|---|---|---|---|"]
    for name, r in res["results"].items():
        t, m = r["time_s"], r.get("memory") or {}
        gf = f"{r['gflops']:.1f}" if name != "ours_core" else "-"
        rows.append(f"| {name} | {1e3 * t['min']:.0f} / {1e3 * t['median']:.0f} / {1e3 * t['max']:.0f} | "
                    f"{1e3 * t['cpu']['median']:.0f} | {gf} | "
                    f"{common.gib(m.get('peak_rss'))} | {common.gib(m.get('step_peak'))} |")
    rows.append(f"\nspeed-up ours vs HF (module): median {res['speedup_median']:.2f}x, "
                f"best {res['speedup_best']:.2f}x, "
                f"by CPU time {res['speedup_cpu']:.2f}x")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
