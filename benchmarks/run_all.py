"""Run every benchmark and write BENCHMARKS.md: ``python benchmarks/run_all.py [--quick] [--presets base,large]``.

Each benchmark runs in its own interpreter (and each candidate's peak memory in a further fresh one), writes JSON
to --workdir, and this script assembles the tables. --quick: 1 timed repeat per candidate after one warm-up,
base only (~10-15 minutes on the 2-core development machine, longer when it is shared).

bf16 needs hardware bf16 GEMMs (AVX512-BF16 / AMX). Where oneDNN reports no bf16 support or the measured bf16 GEMM
peak is below a fifth of fp32's (AVX2-only CPUs), the bf16 benchmarks run at a reduced shape (--bf16-small-args)
so that they finish; the tables say so.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import bench_attention
import bench_parallel
import bench_smoothed_ce
import bench_step
import common

HERE = os.path.dirname(os.path.abspath(__file__))

SMALL_BF16 = "--layers 2 --batch 1 --seq 256 --vocab-size 32000"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--presets", help="comma-separated (default: base with --quick, else base,large)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--out", default=os.path.join(common.REPO, "BENCHMARKS.md"))
    p.add_argument("--workdir", default="/tmp/vega_benchmarks")
    p.add_argument("--profile", action="store_true", default=None,
                   help="add a torch.profiler table of ours' fp32 base step (default: on unless --quick)")
    p.add_argument("--bf16-small-args", default=SMALL_BF16)
    p.add_argument("--force-full-bf16", action="store_true", help="run bf16 at full shape even if slow")
    p.add_argument("--reuse", action="store_true", help="reuse JSON results already in --workdir")
    p.add_argument("--render-only", action="store_true",
                   help="write BENCHMARKS.md from the JSON results already in --workdir, running nothing")
    return p.parse_args()


def run(script: str, args: list[str], json_path: str, log, reuse: bool, render_only: bool = False) -> dict | None:
    if render_only and not os.path.exists(json_path):
        log(f"no {json_path}: left out")
        return None
    if (reuse or render_only) and os.path.exists(json_path):
        log(f"reusing {json_path}")
    else:
        cmd = [sys.executable, os.path.join(HERE, script), *args, "--json", json_path]
        log(f"$ {' '.join(cmd[1:])}")
        t = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
        log(proc.stdout[-3000:])
        if proc.returncode:
            log(f"FAILED ({proc.returncode}):\n{proc.stderr[-4000:]}")
            return None
        log(f"  ({time.time() - t:.0f} s)")
    with open(json_path) as f:
        res = json.load(f)
    res.setdefault("command", "python benchmarks/" + script + " " + " ".join(args))
    return res


def jobs(a, presets, dtypes, slow_bf16):
    """(kind, script, args, json name, reduced) for every benchmark of this run."""
    out = []
    small = a.bf16_small_args.split()
    for preset in presets:
        reps = "1" if a.quick else ("3" if preset == "base" else "2")
        for dt in dtypes:
            reduced = dt == "bf16" and slow_bf16
            args = ["--preset", preset, "--dtype", dt, "--repeats", reps, *(small if reduced else [])]
            if not reduced:  # two models in one process disturb each other: each round in its own processes
                args.append("--isolate")
                if preset != "base":  # at batch 4 two large models do not fit together; at batch 2 and at batch 1
                    # (where HF's [b, h, s, s] score tensors stay under glibc's mmap threshold, see NOTES)
                    out.append(("step", "bench_step.py", args + ["--batch", "1"], f"step_{preset}_{dt}_b1.json",
                                reduced))
                    args += ["--batch", "2"]
            out.append(("step", "bench_step.py", args, f"step_{preset}_{dt}.json", reduced))
    if not a.quick and "fp32" in dtypes:
        out.append(("step", "bench_step.py", ["--preset", "base", "--dtype", "fp32", "--repeats", "2", "--malloc",
                                             "tuned", "--isolate"], "step_base_fp32_malloc.json", False))
    for dt in dtypes:
        reduced = dt == "bf16" and slow_bf16
        args = ["--preset", "base", "--dtype", dt, "--repeats", "3" if a.quick else "5"]
        out.append(("attention", "bench_attention.py", args + (["--batch", "1", "--seq", "256"] if reduced else []),
                    f"attention_{dt}.json", reduced))
    out.append(("smoothed_ce", "bench_smoothed_ce.py", ["--repeats", "3", "--dtypes", ",".join(dtypes)]
                + (["--no-memory"] if a.quick else []), "smoothed_ce.json", False))
    out.append(("parallel", "bench_parallel.py", ["--preset", "base"] + ([] if a.quick else ["--repeats", "2"]),
                "parallel_base.json", False))
    return out


PLANS = [("320 x A100-80GB (the report's cluster)", "a100-80gb"), ("320 x H100-80GB", "h100-80gb")]


def plans(log) -> list[tuple[str, str, str]]:
    """The planner for vega-6b on the report's GPU count: (title, command, output)."""
    out = []
    for title, gpu in PLANS:
        args = ["tools/plan_training.py", "--model-preset", "vega-6b", "--gpus", "320", "--gpu", gpu, "--mfu", "0.4",
                "--train-iters", "1000000", "--global-batch-size", "2560", "--seq-length", "512",
                "--micro-batch-size", "4", "--precision", "bf16", "--top", "8"]
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=common.REPO)
        log(proc.stdout[-2000:] + proc.stderr[-2000:])
        out.append((title, "python " + " ".join(args), proc.stdout.strip()))
    return out


def main():
    a = parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    presets = (a.presets or ("base" if a.quick else "base,large")).split(",")
    dtypes = a.dtypes.split(",")
    logf = open(os.path.join(a.workdir, "run_all.log"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    record = common.machine_record()
    peaks = {d: common.gemm_peak(common.DTYPES[d]) for d in ("fp32", "bf16")}
    log(f"GEMM peaks: {json.dumps(peaks)}")
    # HF's bf16 runs on the dtype's own kernels: where they are slow, bf16 rows use a reduced shape
    slow_bf16 = (not record["mkldnn_bf16"] or peaks["bf16"]["native_gflops"] < 0.2 * peaks["fp32"]["gflops"]) \
        and not a.force_full_bf16
    results = {"step": [], "attention": [], "smoothed_ce": [], "parallel": []}
    for kind, script, args, name, reduced in jobs(a, presets, dtypes, slow_bf16):
        r = run(script, args, os.path.join(a.workdir, name), log, a.reuse, a.render_only)
        if r:
            r["reduced"] = reduced
            results[kind].append(r)
    profile = None
    if a.profile or (a.profile is None and not a.quick):
        path = os.path.join(a.workdir, "profile_ours_base_fp32.txt")
        if not a.render_only and not (a.reuse and os.path.exists(path)):
            cmd = [sys.executable, os.path.join(HERE, "bench_step.py"), "--preset", "base", "--profile", "ours",
                   "--profile-rows", "20", "--threads", "1"]
            log("$ " + " ".join(cmd[1:]))
            with open(path, "w") as f:
                f.write(subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO).stdout)
        if os.path.exists(path):
            with open(path) as f:
                profile = f.read()
    kept = hand_written_sections(a.out)
    with open(a.out, "w") as f:
        f.write(render(record, peaks, slow_bf16, results, profile, plans(log), a.quick) + kept)
    log(f"wrote {a.out}")


# BENCHMARKS.md ends with hand-written sections (measurements behind design choices) that no benchmark here
# regenerates: everything from this line on is carried over when the file is rewritten.
HAND_WRITTEN = "<!-- Hand-written sections below: benchmarks/run_all.py keeps them when it rewrites this file. -->"


def hand_written_sections(path: str) -> str:
    """The hand-written tail of an existing BENCHMARKS.md (from the HAND_WRITTEN line on), or that line alone."""
    text = open(path).read() if os.path.exists(path) else ""
    at = text.find(HAND_WRITTEN)
    return "\n" + (text[at:] if at >= 0 else HAND_WRITTEN + "\n")


def render(record, peaks, slow_bf16, results, profile, planned, quick) -> str:
    step_res, attn_res = results["step"], results["attention"]
    out = ["# Benchmarks", "",
           "Generated by `python benchmarks/run_all.py" + (" --quick" if quick else "") + "`. Ratios compare "
           "candidates timed in alternation (in the same process, or with `--isolate` one fresh process per "
           "candidate and round), so a background load affects both; absolute "
           "figures move with the machine's load (see the load average below).", "",
           "## Machine", "", "| item | value |", "|---|---|", common.format_record(record),
           *(f"| GEMM peak {d} | {p['gflops']:.1f} GFLOP/s ({p['n']}^3, best of 5, by {p['path']}; the dtype's own "
             f"kernels: {p['native_gflops']:.1f}) |" for d, p in peaks.items()),
           "", summary(results), ""]
    if slow_bf16:
        out += ["**bf16 has no fast GEMM on this CPU** (no AVX512-BF16/AMX: oneDNN has no bf16 kernel, so `mm`/`bmm` "
                "fall back to a single-threaded loop at ~1 GFLOP/s and `F.linear` to MKL's conversion path, well "
                "below fp32). The framework therefore computes bf16 products in fp32 here (`runtime.in_fp32`: bf16 "
                "in, fp32 accumulate, bf16 out, what a bf16 matrix unit computes; bf16 kept in memory), so its bf16 "
                "GEMM peak is the fp32 route's. HF's bf16 stays on the slow kernels, so bf16 rows below run a reduced "
                "shape and say so; do not compare them with the fp32 rows.", ""]
    out += ["## Training step (forward + backward + AdamW), ours at TP=1 vs HF DebertaV2ForMaskedLM", "",
            "Same config (`hf_config_dict`), same batch, 15 % of positions labelled, dropout 0.1. HF computes "
            "logits over the full vocabulary at every position (labels = -100 elsewhere); ours only at the labelled "
            "positions (`lm_positions`). fp32: fp32 weights for both. bf16: HF under bf16 autocast (fp32 weights); "
            "ours with bf16 weights and fp32 master weights + AdamW state. MFU = model FLOPs (head at labelled "
            "positions only, the same count for both) x tokens/s / GEMM peak of the dtype "
            "(the fastest measured way to a "
            "product of that dtype, see Machine); HFU counts the FLOPs "
            "each actually executes (HF: head at all positions). Memory: peak RSS of a fresh process doing 2 steps; "
            "step peak = peak minus RSS after building model + optimizer.", ""]
    for r in step_res:
        shape = (f"{r['preset']} {r['dtype']}{' (REDUCED SHAPE)' if r.get('reduced') else ''}"
                 f"{', malloc tuned' if r.get('malloc') == 'tuned' else ''}"
                 f"{', each round in its own processes' if r.get('isolated') else ''}: {r['num_layers']} layers, vocab "
                 f"{r['vocab_size']}, batch {r['batch']} x seq {r['seq']}, {r['model_gflops_per_token']:.3f} model "
                 f"GFLOP/token, {r['repeats']} timed repeat(s)")
        out += [f"### {shape}", "", f"`{r['command']}`", "", peak_line(r), "", bench_step.table(r), ""]
    out += ["## Disentangled attention alone (forward + backward)", "",
            "Ours: `DisentangledSelfAttention` module (fused QKV; on CPU the chunked `ops/attention/cpu.py` core, "
            "in fp32 also for bf16 where the CPU has no bf16 matrix units; on GPU c2p/p2c gathered into one bias for "
            "SDPA). HF: its `DisentangledSelfAttention` + an output `nn.Linear` (ours' module includes the output "
            "projection). `ours_core`: the selected attention core alone on precomputed Q/K/V and position tables.",
            ""]
    for r in attn_res:
        out += [f"### base {r['dtype']}{' (REDUCED SHAPE)' if r.get('reduced') else ''}: batch {r['batch']} x seq "
                f"{r['seq']}, {r['module_gflop']:.1f} GFLOP per call", "", f"`{r['command']}`", "",
                peak_line(r), "", bench_attention.table(r), ""]
    for r in results["smoothed_ce"]:
        out += ["## Fused self-evolution loss vs the naive one (forward + backward)", "",
                f"Soft-target cross entropy over V = {r['vocab']} for n = {r['tokens']} masked tokens, alpha "
                f"{r['alpha']}: the chunked vocab-parallel op (`ops/smoothed_cross_entropy.py`) vs log_softmax + "
                "a materialized smoothed target. Ratios are fused / naive (below 1 = the fused op is better).", "",
                f"`{r['command']}`", "", bench_smoothed_ce.table(r["results"]), ""]
    for r in results["parallel"]:
        res = r["results"]
        base = res.get("TP1", next(iter(res.values())))["median"]
        out += ["## Tensor and pipeline parallelism on this machine: TP=2 and PP=2 vs TP=1", "",
                f"`pretrain_vega.py --mock-data`, {r['preset']}, seq {r['seq']}, global batch "
                f"{r['global_batch_size']} in micro-batches of {r['micro_batch_size']}, fp32; each layout gets the "
                "machine's cores (TP=1: 1 process x all threads; TP=2 / PP=2: 2 processes sharing them). On two "
                "cores this measures the cost of the parallel machinery (gloo collectives, pipeline bubble, one "
                "thread per GEMM), not a speed-up: the layouts exist for memory and for GPUs.", "",
                f"`{r['command']}`", "", bench_parallel.table(res, base), ""]
    if planned:
        out += ["## Planner: vega-6b on 320 GPUs", "",
                "Memory per rank for each layout choice, FLOPs per token and the time for 1M steps at a stated MFU "
                "(`tools/plan_training.py`; the 8 best-ranked layouts of each run).", ""]
        for title, command, text in planned:
            out += [f"### {title}", "", f"`{command}`", "", "```", text, "```", ""]
    if profile:
        profile = "\n".join(line for line in profile.splitlines() if not line.startswith("USDT"))
        out += ["## Where ours' fp32 base step goes (torch.profiler, self CPU time, one step, 1 thread)", "",
                "One thread so that other jobs on the machine distort the attribution less.", "", "```",
                profile.strip(), "```", ""]
    out += ["## What limits these figures", "", NOTES]
    return "\n".join(out) + "\n"


def summary(results) -> str:
    step_res, attn_res = results["step"], results["attention"]
    rows = ["## Summary", "",
            "| benchmark | ours | HF | speed-up (wall, median) | speed-up (CPU time) | MFU ours / HF |"
            " peak RSS ours / HF GiB |", "|---|---|---|---|---|---|---|"]
    for r in step_res:
        if "speedup_median" not in r:
            continue
        o, h = r["results"]["ours"], r["results"]["hf"]
        mem = " / ".join(common.gib((x.get("memory") or {}).get("peak_rss")) for x in (o, h))
        tag = " REDUCED" if r.get("reduced") else ""
        tag += ", malloc tuned" if r.get("malloc") == "tuned" else ""
        tag += f", b{r['batch']}" + (" isolated" if r.get("isolated") else "")
        rows.append(f"| step {r['preset']} {r['dtype']}{tag} | {o['tokens_per_s']:.1f} tok/s | "
                    f"{h['tokens_per_s']:.1f} tok/s | {r['speedup_median']:.2f}x | {r['speedup_cpu']:.2f}x | "
                    f"{100 * o['mfu']:.1f} % / {100 * h['mfu']:.1f} % | {mem} |")
    for r in attn_res:
        o, h = r["results"]["ours"], r["results"]["hf"]
        mem = " / ".join(common.gib((x.get("memory") or {}).get("peak_rss")) for x in (o, h))
        rows.append(f"| attention base {r['dtype']}{' REDUCED' if r.get('reduced') else ''} | "
                    f"{1e3 * o['time_s']['median']:.0f} ms | {1e3 * h['time_s']['median']:.0f} ms | "
                    f"{r['speedup_median']:.2f}x | {r['speedup_cpu']:.2f}x | - | {mem} |")
    for r in results["smoothed_ce"]:
        for d in r["results"]:
            t, m = d.get("time_s", {}), d.get("memory", {})
            if "fused" not in t or "naive" not in t:
                continue
            mem = " / ".join(common.gib((m.get(c) or {}).get("peak_rss")) for c in ("fused", "naive"))
            rows.append(f"| SE loss {d['dtype']} (fused vs naive) | {1e3 * t['fused']['median']:.0f} ms | "
                        f"{1e3 * t['naive']['median']:.0f} ms (naive) | "
                        f"{t['naive']['median'] / t['fused']['median']:.2f}x"
                        f" | {t['naive']['cpu']['median'] / t['fused']['cpu']['median']:.2f}x | - | {mem} |")
    for r in results["parallel"]:
        res = r["results"]
        base = res["TP1"]["median"] if "TP1" in res else None
        for name, x in res.items():
            if name != "TP1" and base:
                rows.append(f"| {r['preset']} {name} vs TP1 (pretrain loop) | {x['median']:.1f} tok/s | "
                            f"{base:.1f} tok/s (TP1) | {x['median'] / base:.2f}x | - | - | - |")
    return "\n".join(rows)


def peak_line(r: dict) -> str:
    p = r["gemm_peak"]
    return (f"GEMM peak {p['dtype']} sampled {p.get('samples', 1)}x during the run: max {p['gflops']:.1f}, min "
            f"{p.get('min_gflops', p['gflops']):.1f} GFLOP/s (a low min = other jobs on the cores; MFU uses the max). "
            f"Load average at start: {r['machine']['load_average'] if 'machine' in r else 'n/a'}.")


NOTES = """\
- **Shared 2-core CPU.** Other jobs on the machine (tests, preprocessing) take cores from the 2 OpenMP threads and
  oversubscription stalls whole steps: wall times then vary 2-3x between repeats. Candidates alternate in the same
  process so the wall ratio stays roughly fair; the CPU-time ratio (user + sys of the process, which does not count
  waiting for a core) is the steadier figure. The GEMM-peak samples' min/max show how contended each run was.
- **Matrix products** (mm/addmm for the linears, bmm/baddbmm for attention) are ~60 % of ours' fp32 step and run
  near the GEMM peak; the batched [s, d] x [d, s] products with d = 64 run at roughly half of it.
- **Dropout masks.** `bernoulli_` draws one mt19937 number per element, serially (PyTorch's vectorised MKL
  generator is used on Intel CPUs only): ~12 ns per element here, and the attention-probability masks alone are
  b·h·s² elements per layer. Ours' CPU attention core draws each chunk's mask on its worker from a generator of
  its own, four 15-bit lanes per 64-bit draw (~1.5 ns per element; p on a 2^-15 grid, the scale matched to it).
  The hidden-state dropouts use the same draw (`ops/dropout.py`: 0.37 s -> 0.12 s of a large batch-1 step);
  all of HF's dropouts use `bernoulli_`.
- **Attention core on CPU (fp32).** `_CpuAttention` in `ops/attention/cpu.py` works in chunks of 2 heads of one
  sequence on single-threaded workers: c2p gathered straight into the score buffer, p2c added transposed, mask,
  `baddbmm_`, in-place softmax, dropout with a uint8 mask, PV, and a hand-written backward. Most of its gain over HF
  is allocation: HF allocates fresh 50 MB score tensors (page faults, kernel zeroing, ~0.9 s of sys time per call);
  ours keeps per-thread chunk buffers. With `--malloc tuned` HF catches up to ~1.2x: both are then bound by the same
  GEMMs (~52 GFLOP per call; measured before the parallel mask draws). Relative-shift (Toeplitz) variants and
  index_select were measured slower than the gather. On GPU the same module uses SDPA with the merged additive bias
  (a fused FlashDeBERTa-style kernel would remove the [b, h, s, s] terms).
- **Page faults.** glibc serves every block above 32 MiB (each [4, 12, 512, 512] fp32 score tensor is 50 MB) with
  a fresh mmap, so each use pays page faults and kernel zeroing: ~20 % of the process's CPU time was sys time.
  `--malloc tuned` (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=2^31-1; jemalloc/tcmalloc via LD_PRELOAD are the
  usual alternatives) halves the sys time. With each candidate in its own processes both gain a little and the
  base ratio hardly moves (session 4: 2.02x default, 2.01x tuned), while HF's peak RSS grows (freed memory stays
  in the heap). The two rows are separate runs: compare their ratios, not their absolute times.
- **HF's head over the full vocabulary** at every position costs ~6·h·V FLOPs per token (0.59 GFLOP/token for
  V = 128k at base), ours only at the labelled 15 %: the largest single saving, and it shrinks ours' peak memory
  (HF keeps [b·s, V] fp32 logits and their log-softmax for the backward).
- **bf16** needs AVX512-BF16 or AMX for its own GEMM kernels. Without them (AVX2-only CPUs such as this AMD EPYC)
  oneDNN has no bf16 GEMM, `mm`/`bmm` fall back to a single-threaded loop (~1 GFLOP/s) and `F.linear` to MKL's
  conversion path (~10-20 GFLOP/s). On such CPUs the framework's bf16 model keeps bf16 weights and activations
  but computes every matrix product in fp32 (`runtime.in_fp32`: megatron-core's parallel linears, the attention
  core, the position projections, the nGiE conv, the MLM head), with the upcast inputs saved for the backward as
  the original bf16 tensors; the head's product with the vocabulary table goes by blocks of rows, so no fp32 copy
  of the table or of its gradient exists (`runtime.linear_in_fp32`: 1.86 -> 1.74 GiB peak at the reduced large
  shape). HF under bf16 autocast stays on the slow kernels, hence the large bf16 ratios. On
  bf16-capable hardware both use the native kernels and the fp32 rows are the comparison to quote.
- **One process or one per candidate; the batch at large.** Two models in one process disturb each other (heap,
  page faults): in session 3, large fp32 at batch 1 measured 1.42x in one process and 1.25x with `--isolate`,
  base fp32 2.23x in one process and 1.88x isolated (a separate run). Every full-shape row is therefore timed
  with `--isolate`. Large runs at batch 2 (two large models with AdamW and activations do not fit in 24 GiB
  together at batch 4; HF alone at batch 2 peaks at ~14 GiB) and at batch 1. At batch 1 HF's [1, 16, 512, 512]
  fp32 score tensors (16 MiB) stay under glibc's 32 MiB mmap threshold, so HF runs without the page-fault cost
  above; from batch 2 on (as base at batch 4) they are fresh mmaps. Both rows are what the two frameworks do on
  glibc's default allocator. Batch 1 is where ours' lead is smallest: the step is then mostly the GEMMs of the
  layers both share (ours ~60 % MFU), and the fixed costs per step (the optimizer over 435M parameters, the
  dense [V, H] embedding gradient) weigh more.
- **Optimizer.** megatron-core without TE/apex builds torch's AdamW with its default implementation: on CPU the
  per-tensor loop (foreach=True is slower still here). The framework switches it to torch's fused kernel
  (`training/optimizer.py`), ~2.7x faster than the loop; HF keeps torch's default, as its Trainer does
  (`optim="adamw_torch"`). Each table's "optimizer s" column is that part of the step, so the ratio without it can
  be read off. At large (435M parameters, 512 or 1024 tokens per step) it is a sizeable share of the step.
- **MFU** uses model FLOPs (MLM head at the labelled positions only) for both candidates, so HF's wasted head work
  lowers its MFU; its executed-FLOP utilisation (HFU) is in the tables too.
"""


if __name__ == "__main__":
    main()
