"""Training-step benchmark: this framework (TP=1) vs Hugging Face DebertaV2ForMaskedLM, same config and batch.

One step = zero_grad + forward + MLM loss + backward + AdamW step, dropout 0.1, training mode.
  * HF: ``labels`` = -100 except at the masked positions; it computes logits over the whole vocabulary at every
    position (its real cost).
  * ours: ``lm_positions`` = the masked positions (flat, sequence-major); logits only there, loss with
    megatron-core's vocab_parallel_cross_entropy as the trainer does.
Precision (``--dtype bf16``):
  * HF: bf16 autocast over fp32 weights (HF's usual mixed-precision recipe), or ``--hf-bf16 weights``.
  * ours: bf16 weights (Megatron's scheme: bf16 params and activations, fp32 master weights and AdamW state),
    or ``--ours-bf16 autocast``. ``--hf-bf16 weights`` gets the same fp32-master optimizer.
Optimizer: torch.optim.AdamW(lr 1e-4, weight decay 0.01) on fp32 (master) params. Ours uses its fused kernel, as
the framework's trainers do (training/optimizer.py); HF gets torch's default implementation, which is what HF's
Trainer uses by default (optim="adamw_torch"; on CPU the per-tensor loop, faster here than foreach=True). The
optimizer's own time per step is reported for each, so the step can be compared without it too.

Model FLOPs per token (megatron_vega/training/flops.py, the formula the trainer logs), training = 3 x forward:
  fwd = 2 * [ L * (3hp + ph + 2hf                 # QKV, output projection, FFN
                   + 2sp + (c2p+p2c) * 2k * p      # QK^T, PV; Q.Kr^T and K.Qr^T against the 2k relative rows
                   + (c2p+p2c) * 2k * h * p / (s*b))  # projecting the [2k, h] relative table per layer
               + h*h*conv_kernel                    # nGiE conv
               + m * (h*h + h*V) ]                  # MLM head at the masked fraction m only
MFU = model FLOPs/token x tokens/s / measured GEMM peak (same for both: HF's extra full-vocabulary head is
wasted work, so it is not model FLOPs; its executed FLOPs, with m = 1, are reported separately).
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

import common
import torch

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig, model_preset
from megatron_vega.convert.hf_mapping import hf_config_dict
from megatron_vega.training.flops import train_flops_per_token


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per candidate (alternating)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--layers", type=int, default=None, help="override num_layers (smaller runs)")
    p.add_argument("--vocab-size", type=int, default=None, help="override the vocabulary (e.g. 32000)")
    p.add_argument("--hf-bf16", default="autocast", choices=["autocast", "weights"])
    p.add_argument("--ours-bf16", default="weights", choices=["weights", "autocast"])
    p.add_argument("--only", choices=["ours", "hf"], help="time one candidate only")
    p.add_argument("--no-memory", action="store_true", help="skip the per-candidate memory subprocesses")
    p.add_argument("--isolate", action="store_true",
                   help="time each round in fresh processes, one per candidate (alternating order; each builds, "
                        "warms up and times one step): the candidates never share a heap, and two large models "
                        "need not fit in memory together")
    p.add_argument("--profile", choices=["ours", "hf"], help="profile one step of this candidate and exit")
    p.add_argument("--profile-rows", type=int, default=30)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--malloc", default="default", choices=["default", "tuned"],
                   help="tuned: glibc keeps big blocks on the heap (common.tune_malloc), for both candidates")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--memory-probe", choices=["ours", "hf"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def model_config(args):
    over = {"hidden_dropout": 0.1, "attention_dropout": 0.1}
    if args.layers:
        over["num_layers"] = args.layers
    if args.vocab_size:
        over["vocab_size"] = args.vocab_size
    return model_preset(args.preset, **over)


def make_batch(cfg, args):
    """Full-length sequences (packed pretraining data), mask_prob of the positions labelled."""
    gen = torch.Generator().manual_seed(args.seed)
    b, s = args.batch, args.seq
    tokens = torch.randint(5, cfg.vocab_size, (b, s), generator=gen)
    padding = torch.ones(b, s, dtype=torch.long)
    n = max(1, round(args.mask_prob * b * s))
    lm_positions = torch.randperm(b * s, generator=gen)[:n].sort().values  # flat s-major: pos = i_s * b + i_b
    lm_labels = tokens.t().reshape(-1)[lm_positions]
    hf_labels = torch.full((s * b,), -100, dtype=torch.long)
    hf_labels[lm_positions] = lm_labels
    return dict(tokens=tokens, padding=padding, lm_positions=lm_positions, lm_labels=lm_labels,
                hf_labels=hf_labels.view(s, b).t().contiguous())


class AdamWMaster:
    """AdamW on fp32 params; for bf16 params on fp32 master copies, as Megatron does: each bf16 gradient is moved
    into its master's fp32 gradient as soon as backward has produced it (Megatron's main_grad), the bf16 weights
    are copied back after the step. ``seconds`` collects the time of each step() (master copies included)."""

    def __init__(self, params, fused: bool):
        self.params = [p for p in params if p.requires_grad]
        self.low = any(p.dtype != torch.float32 for p in self.params)
        self.master = ([p.detach().float().clone().requires_grad_() for p in self.params]
                       if self.low else self.params)
        if self.low:
            for p, m in zip(self.params, self.master):
                p.register_post_accumulate_grad_hook(partial(self._to_master, m))
        self.opt = torch.optim.AdamW(self.master, lr=1e-4, weight_decay=0.01, fused=fused or None)
        self.seconds = []

    @staticmethod
    @torch.no_grad()
    def _to_master(master, param):
        master.grad = param.grad.float()
        param.grad = None

    def zero_grad(self):
        for p in self.master:
            p.grad = None

    @torch.no_grad()
    def step(self):
        start = time.perf_counter()
        self.opt.step()
        if self.low:
            for m, p in zip(self.master, self.params):
                p.copy_(m)
        self.seconds.append(time.perf_counter() - start)


def autocast(on: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def build_hf(cfg, args, batch):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM
    torch.manual_seed(args.seed)
    model = DebertaV2ForMaskedLM(DebertaV2Config(**hf_config_dict(cfg))).train()
    use_autocast = args.dtype == "bf16" and args.hf_bf16 == "autocast"
    if args.dtype == "bf16" and args.hf_bf16 == "weights":
        model.to(torch.bfloat16)
    opt = AdamWMaster(model.parameters(), fused=False)

    def step():
        opt.zero_grad()
        with autocast(use_autocast):
            out = model(input_ids=batch["tokens"], attention_mask=batch["padding"], labels=batch["hf_labels"])
        out.loss.backward()
        opt.step()
        return out.loss.detach()
    step.optimizer = opt
    return step


def build_ours(cfg, args, batch):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_vega.model.attention_inputs import AttentionInputs
    from megatron_vega.model.build import build_model, transformer_config
    from megatron_vega.model.weights import init_weights
    runtime.init_distributed()
    runtime.init_model_parallel(1, 1, seed=args.seed)
    weights_bf16 = args.dtype == "bf16" and args.ours_bf16 == "weights"
    use_autocast = args.dtype == "bf16" and args.ours_bf16 == "autocast"
    [model] = build_model(cfg, transformer_config(cfg, ParallelConfig(), "bf16" if weights_bf16 else "fp32"))
    init_weights([model], args.seed)
    model.train()
    opt = AdamWMaster(model.parameters(), fused=True)

    def step():
        opt.zero_grad()
        with autocast(use_autocast):
            logits = model(batch["tokens"], AttentionInputs(batch["padding"]), lm_positions=batch["lm_positions"])
        loss = vocab_parallel_cross_entropy(logits.float(), batch["lm_labels"]).mean()
        loss.backward()
        opt.step()
        return loss.detach()
    step.optimizer = opt
    return step


BUILDERS = {"ours": build_ours, "hf": build_hf}


def forwarded_args(argv):
    """The command line minus the parent-only options, for the memory subprocesses."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--json", "--only", "--profile", "--memory-probe", "--repeats"):
            skip = True
            continue
        if a.startswith(("--json=", "--only=", "--profile=", "--repeats=")) or a == "--no-memory":
            continue
        out.append(a)
    return out


def isolated_rounds(names: list[str], argv: list[str], repeats: int, between) -> tuple[dict, dict]:
    """--isolate: (timing as common.time_alternating returns it, median optimizer seconds) per candidate."""
    fwd = [a for a in forwarded_args(argv) if a != "--isolate"]
    times, cpu, opt = ({n: [] for n in names} for _ in range(3))
    for r in range(repeats):
        between()
        for name in names if r % 2 == 0 else names[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "round.json")
                subprocess.run([sys.executable, os.path.abspath(__file__), *fwd, "--only", name, "--repeats", "1",
                                "--no-memory", "--json", path], check=True, capture_output=True, cwd=common.REPO)
                with open(path) as f:
                    res = json.load(f)["results"][name]
            times[name].append(res["step_s"]["times"][0])
            cpu[name].append(res["step_s"]["cpu"]["times"][0])
            opt[name].append(res["optimizer_s"])
            print(f"  round {r + 1}/{repeats} {name} (own process): {times[name][-1]:.2f} s wall, "
                  f"{cpu[name][-1]:.2f} s CPU", flush=True)
    timing = {n: {**common.summarize(times[n]), "cpu": common.summarize(cpu[n])} for n in names}
    return timing, {n: statistics.median(opt[n]) for n in names}


def profile(step, rows: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    step()  # warm-up
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run(args, argv) -> dict:
    if args.malloc == "tuned":
        common.tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = model_config(args)
    batch = make_batch(cfg, args)
    if args.memory_probe:
        step = BUILDERS[args.memory_probe](cfg, args, batch)
        common.reset_peak_rss()
        rss = common.rss_bytes()
        for _ in range(2):  # the second step holds optimizer state, activations and grads together
            step()
        common.report_memory(rss)
        sys.exit(0)
    if args.profile:
        print(profile(BUILDERS[args.profile](cfg, args, batch), args.profile_rows))
        sys.exit(0)

    record = common.machine_record()
    dtype = common.DTYPES[args.dtype]
    sampler = common.PeakSampler(dtype)
    first = sampler()
    print(f"GEMM peak {first['dtype']}: {first['gflops']:.1f} GFLOP/s ({first['n']}^3, best of 3)", flush=True)
    names = [args.only] if args.only else ["ours", "hf"]
    memory = {}
    if not args.no_memory:  # first, while this process is small: a probe of HF base peaks at ~11 GiB
        fwd = forwarded_args(argv)
        for name in names:
            print(f"  memory probe {name} (fresh subprocess) ...", flush=True)
            memory[name] = common.probe_memory(os.path.abspath(__file__), name, fwd)
    if args.isolate:
        timing, optimizer_s = isolated_rounds(names, argv, args.repeats, sampler)
    else:
        steps = {name: BUILDERS[name](cfg, args, batch) for name in names}
        timing = common.time_alternating(steps, args.repeats, args.warmup, between=sampler)
        optimizer_s = {name: statistics.median(steps[name].optimizer.seconds) for name in names}
    sampler()
    peak = sampler.summary()

    tokens = args.batch * args.seq
    model_flops = train_flops_per_token(cfg, args.seq, args.mask_prob, micro_batch_size=args.batch)
    # HF computes the output layer at every position
    executed = {"ours": model_flops, "hf": train_flops_per_token(cfg, args.seq, 1.0, micro_batch_size=args.batch)}
    results = {}
    for name in names:
        t = timing[name]
        tps = tokens / t["median"]
        results[name] = dict(step_s=t, tokens_per_s=tps, tokens_per_s_best=tokens / t["min"],
                             model_gflops=model_flops * tps / 1e9, mfu=model_flops * tps / (peak["gflops"] * 1e9),
                             executed_gflops_per_token=executed[name] / 1e9,
                             hfu=executed[name] * tps / (peak["gflops"] * 1e9),
                             optimizer_s=optimizer_s[name])
    for name in names:
        results[name]["memory"] = memory.get(name)
    out = dict(bench="step", preset=args.preset, dtype=args.dtype, batch=args.batch, seq=args.seq,
               mask_prob=args.mask_prob, num_layers=cfg.num_layers, vocab_size=cfg.vocab_size,
               hf_bf16=args.hf_bf16, ours_bf16=args.ours_bf16, repeats=args.repeats, malloc=args.malloc,
               isolated=args.isolate,
               model_gflops_per_token=model_flops / 1e9, gemm_peak=peak, machine=record, results=results)
    if len(names) == 2:
        out["speedup_median"] = timing["hf"]["median"] / timing["ours"]["median"]
        out["speedup_best"] = timing["hf"]["min"] / timing["ours"]["min"]
        out["speedup_cpu"] = timing["hf"]["cpu"]["median"] / timing["ours"]["cpu"]["median"]
    return out


def table(res: dict) -> str:
    rows = ["| candidate | step s (min / median / max) | CPU s (median) | tokens/s | model GFLOP/s | MFU |"
            " executed GFLOP/token | HFU | optimizer s | peak RSS GiB | step peak GiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["results"].items():
        t, m = r["step_s"], r.get("memory") or {}
        rows.append(f"| {name} | {t['min']:.2f} / {t['median']:.2f} / {t['max']:.2f} | {t['cpu']['median']:.1f} | "
                    f"{r['tokens_per_s']:.1f} | "
                    f"{r['model_gflops']:.1f} | {100 * r['mfu']:.1f} % | {r['executed_gflops_per_token']:.3f} | "
                    f"{100 * r['hfu']:.1f} % | {r['optimizer_s']:.2f} | {common.gib(m.get('peak_rss'))} | "
                    f"{common.gib(m.get('step_peak'))} |")
    if "speedup_median" in res:
        rows.append(f"\nspeed-up ours vs HF (HF step time / ours): median {res['speedup_median']:.2f}x, "
                    f"best {res['speedup_best']:.2f}x, by CPU time {res['speedup_cpu']:.2f}x")
    return "\n".join(rows)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    res = run(args, argv)
    print(f"\n{args.preset} {args.dtype} batch {args.batch} x seq {args.seq}, {res['num_layers']} layers, vocab "
          f"{res['vocab_size']}, model {res['model_gflops_per_token']:.3f} GFLOP/token, GEMM peak "
          f"{res['gemm_peak']['gflops']:.1f} GFLOP/s (min sample {res['gemm_peak']['min_gflops']:.1f}), malloc "
          f"{res['malloc']}")
    print(table(res))
    res["command"] = "python benchmarks/bench_step.py " + " ".join(a for a in argv if a != args.json and a != "--json")
    common.write_json(args.json, res)


if __name__ == "__main__":
    main()
