"""Self-evolution soft-target cross entropy, forward + backward: the chunked vocab-parallel op vs a materialized one.

Candidates, on the same inputs (student logits [n, V] with grad, reference logits [n, V], targets [n]; by default
V = 128100, n = 4096 masked tokens, TP = 1, α = 0.5):
  * ``fused``: megatron_vega.ops.smoothed_cross_entropy.smoothed_vocab_parallel_cross_entropy (chunked; only the
    [n, V] gradient buffer is allocated at full size);
  * ``naive``: the materialized form (as the op's tests compute it) — log_softmax(student),
    ỹ = (1−α)·onehot + α·softmax(reference) materialized in fp32, −Σ ỹ·log p, autograd backward.
Each measured unit is loss.sum().backward() with the student's .grad dropped first (no accumulation).

Time: candidates alternate (A B, B A, ...) in one process (benchmarks/common.py); the ratios fused / naive of the
median and of the best wall time are the figures to quote on a shared machine (CPU time is shown too; on a loaded
machine it includes the thread pool's spin-waiting).
Peak memory: each candidate runs in a fresh interpreter; inputs are built row-block by row-block (no full-size fp32
temporary), then the RSS high-water mark is reset (/proc/self/clear_refs) and ``step_peak`` = high-water mark after
two steps − RSS after building the inputs: what forward + backward add on top of the inputs, including the [n, V]
gradient both must return. ``peak_rss`` (whole process) is reported too. Runs refuse to start when the machine
lacks the memory the naive candidate needs (it is shared).
"""
import argparse
import os

import common
import psutil
import torch

from megatron_vega import runtime
from megatron_vega.ops.smoothed_cross_entropy import smoothed_vocab_parallel_cross_entropy

CANDIDATES = ("fused", "naive")



def naive_smoothed_cross_entropy(z, y, target, alpha, ignore_index=-100):
    """The candidate the fused op replaces: full-vocabulary logits [n, V] -> per-token -sum(soft * log softmax(z)),
    the soft target (1 - alpha) * onehot + alpha * softmax(y) materialized in fp32 (as the op's tests do)."""
    logp = torch.log_softmax(z.float(), dim=-1)
    with torch.no_grad():
        soft = torch.softmax(y.float(), dim=-1).mul_(alpha)
        valid = target != ignore_index
        rows = torch.nonzero(valid).squeeze(1)
        soft[rows, target[rows]] += 1.0 - alpha
        soft[~valid] = 0.0
    return -(soft * logp).sum(-1)

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=128100)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--chunk-size", type=int, help="rows per chunk of the fused op (default: the op's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--memory-probe", choices=CANDIDATES, help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=list(common.DTYPES), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_inputs(args, dtype):
    g = torch.Generator().manual_seed(args.seed)
    z = torch.empty(args.tokens, args.vocab, dtype=dtype)
    y = torch.empty_like(z)
    for a in range(0, args.tokens, 256):  # row blocks: no full-size fp32 temporary in the setup peak
        rows = min(256, args.tokens - a)
        z[a:a + rows] = torch.randn(rows, args.vocab, generator=g) * 2
        y[a:a + rows] = z[a:a + rows] + torch.randn(rows, args.vocab, generator=g)
    target = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    return z.requires_grad_(), y, target


def step_fn(name, args, z, y, target):
    def fused():
        return smoothed_vocab_parallel_cross_entropy(z, y, target, args.alpha, chunk_size=args.chunk_size)

    def naive():
        return naive_smoothed_cross_entropy(z, y, target, args.alpha)

    loss_fn = {"fused": fused, "naive": naive}[name]

    def step():
        z.grad = None
        loss = loss_fn()
        loss.sum().backward()
        return loss.detach()
    return step


def needed_bytes(args, dtype) -> int:
    """Peak of the naive candidate with some margin: the inputs plus 4 fp32 [n, V] tensors (measured: 3)."""
    nv = args.tokens * args.vocab
    return 2 * nv * dtype.itemsize + 4 * nv * 4


def enough_memory(args, dtype, what: str) -> bool:
    need, free = needed_bytes(args, dtype), psutil.virtual_memory().available
    if need > 0.9 * free:
        print(f"  skipped {what}: needs ~{common.gib(need)} GiB, {common.gib(free)} GiB available (shared machine)")
        return False
    return True


def memory_probe(args):
    z, y, target = make_inputs(args, common.DTYPES[args.dtype])
    step = step_fn(args.memory_probe, args, z, y, target)
    try:  # reset VmHWM so that only the steps count (Linux; otherwise the setup peak is small anyway)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    rss = common.rss_bytes()
    for _ in range(2):
        step()
    common.report_memory(rss)


def run_dtype(args, dname) -> dict:
    dtype = common.DTYPES[dname]
    res = {"dtype": dname, "memory": {}}
    if not args.no_memory:
        fwd = ["--vocab", str(args.vocab), "--tokens", str(args.tokens), "--alpha", str(args.alpha),
               "--dtype", dname, "--seed", str(args.seed)]
        fwd += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
        fwd += ["--threads", str(args.threads)] if args.threads else []
        for name in CANDIDATES:
            if enough_memory(args, dtype, f"{name} memory probe"):
                res["memory"][name] = common.probe_memory(os.path.abspath(__file__), name, fwd)
    if not enough_memory(args, dtype, "timing"):
        return res
    z, y, target = make_inputs(args, dtype)
    calls = {name: step_fn(name, args, z, y, target) for name in CANDIDATES}
    loss_f, grad_f = calls["fused"](), z.grad
    loss_n = calls["naive"]()
    res["max_abs_loss_diff"] = (loss_f - loss_n).abs().max().item()
    res["max_abs_grad_diff"] = (grad_f.float() - z.grad.float()).abs().max().item()
    del grad_f
    res["time_s"] = common.time_alternating(calls, args.repeats, args.warmup)
    return res


def table(results: list[dict]) -> str:
    rows = ["| dtype | candidate | fwd+bwd wall s (min / median) | CPU s (median) | step peak GiB | peak RSS GiB |",
            "|---|---|---|---|---|---|"]
    ratios = []
    for r in results:
        t, m = r.get("time_s", {}), r["memory"]
        for name in CANDIDATES:
            tm, mm = t.get(name), m.get(name) or {}
            ts = f"{tm['min']:.2f} / {tm['median']:.2f}" if tm else "n/a"
            cpu = f"{tm['cpu']['median']:.2f}" if tm and "cpu" in tm else "n/a"
            rows.append(f"| {r['dtype']} | {name} | {ts} | {cpu} | {common.gib(mm.get('step_peak'))} | "
                        f"{common.gib(mm.get('peak_rss'))} |")
        line = f"{r['dtype']}: fused / naive"
        if t:
            f, n = t["fused"], t["naive"]
            line += f" time: median {f['median'] / n['median']:.2f}, best {f['min'] / n['min']:.2f}"
            if "cpu" in f:
                line += f", CPU median {f['cpu']['median'] / n['cpu']['median']:.2f}"
        if (m.get("fused") or {}).get("step_peak") and (m.get("naive") or {}).get("step_peak"):
            line += (f"; memory: step peak {m['fused']['step_peak'] / m['naive']['step_peak']:.2f}"
                     f", whole-process peak {m['fused']['peak_rss'] / m['naive']['peak_rss']:.2f}")
        if "max_abs_loss_diff" in r:
            line += f"; max |Δloss| {r['max_abs_loss_diff']:.1e}, max |Δgrad| {r['max_abs_grad_diff']:.1e}"
        ratios.append(line)
    return "\n".join(rows + [""] + ratios)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime.init_distributed()
    runtime.init_model_parallel(1, 1)
    if args.memory_probe:
        memory_probe(args)
        return
    print(f"soft-target CE fwd+bwd: V={args.vocab}, n={args.tokens}, alpha={args.alpha}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    results = [run_dtype(args, d) for d in args.dtypes.split(",")]
    print(table(results))
    common.write_json(args.json, dict(bench="smoothed_ce", vocab=args.vocab, tokens=args.tokens, alpha=args.alpha,
                                      threads=torch.get_num_threads(), machine=common.machine_record(),
                                      results=results))


if __name__ == "__main__":
    main()
