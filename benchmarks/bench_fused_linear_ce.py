"""Self-evolution's loss path, output projection included, forward + backward: the fused projection + soft-target CE
(ops/fused_linear_cross_entropy.py) against the two paths that materialise the logits.

Inputs: student hidden states [n, H] (with grad), reference hidden states [n, H], the output weight [V, H] and bias
[V] (with grad), targets [n]; by default V = 128100, n = 4096 masked tokens, H = 1024, TP = 1, α = 0.5, fp32
(``--dtype bf16``: hidden states, weight and bias in bf16, as a bf16 model's head sees them).
  * ``fused``: fused_linear_soft_target_cross_entropy (token chunks of whole vocabulary rows, ~2^26 logits each);
  * ``logits_op``: today's path: student logits h W^T + b with grad and reference logits without (the MLM head's
    projection, runtime.linear_in_fp32), then smoothed_vocab_parallel_cross_entropy (chunked over rows; it keeps
    one [n, V] gradient buffer);
  * ``naive``: the same logits, then the materialised soft-target CE (bench_smoothed_ce.naive_smoothed_cross_entropy).
One measured unit: the summed loss's backward with the leaves' grads dropped first.

Peak memory as in bench_smoothed_ce: one fresh interpreter per candidate, the RSS high-water mark reset after the
inputs are built; ``step_peak`` = high-water mark over the steps − RSS after setup (includes the [V, H] weight
gradient every candidate returns). Time: candidates alternate in one process (benchmarks/common.py), at
``--time-tokens`` tokens (default: all) so that a shared machine can time a smaller batch than it measures.
"""
import argparse
import os

import common
import psutil
import torch
from bench_smoothed_ce import naive_smoothed_cross_entropy

from megatron_vega import runtime
from megatron_vega.ops.fused_linear_cross_entropy import fused_linear_soft_target_cross_entropy
from megatron_vega.ops.smoothed_cross_entropy import smoothed_vocab_parallel_cross_entropy

CANDIDATES = ("fused", "logits_op", "naive")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=128100)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--time-tokens", type=int, help="tokens for the timing (default: --tokens)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=1, help="steps per memory probe")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--memory-fraction", type=float, default=0.6,
                   help="probe a candidate only if its estimated need is below this fraction of available memory")
    p.add_argument("--json")
    p.add_argument("--memory-probe", choices=CANDIDATES, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_inputs(vocab: int, tokens: int, hidden: int, dtype: str = "fp32", seed: int = 1234):
    g = torch.Generator().manual_seed(seed)
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    h = torch.randn(tokens, hidden, generator=g)
    h_ref = (h + 0.3 * torch.randn(tokens, hidden, generator=g)).to(dt)
    weight = (torch.randn(vocab, hidden, generator=g) * hidden ** -0.5).to(dt).requires_grad_()
    bias = torch.zeros(vocab, dtype=dt, requires_grad=True)
    target = torch.randint(0, vocab, (tokens,), generator=g)
    return h.to(dt).requires_grad_(), h_ref, weight, bias, target


def step_fn(name, alpha, h, h_ref, weight, bias, target):
    vocab = weight.size(0)

    def loss():
        """(scalar to differentiate, per-token losses)"""
        if name == "fused":
            out = fused_linear_soft_target_cross_entropy(h, h_ref, weight, bias, target, alpha, vocab)
            return out.loss, out.token_losses
        z = runtime.linear_in_fp32(h, weight) + bias
        with torch.no_grad():
            y = runtime.linear_in_fp32(h_ref, weight) + bias
        if name == "logits_op":
            per_token = smoothed_vocab_parallel_cross_entropy(z.float(), y.float(), target, alpha, vocab_size=vocab)
        else:
            per_token = naive_smoothed_cross_entropy(z, y, target, alpha)
        return per_token.sum(), per_token

    def step():
        h.grad = weight.grad = bias.grad = None
        total, per_token = loss()
        total.backward()
        return per_token.detach().float()
    return step


def needed_bytes(name, args) -> int:
    """What a candidate's steps may need on top of the inputs (fp32), with margin: the weight gradient, and for the
    materialising paths five [n, V] tensors (measured: about four)."""
    nv = args.tokens * args.vocab * 4
    return 2 * args.vocab * args.hidden * 4 + (0 if name == "fused" else 5 * nv)


def memory_probe(args):
    inputs = make_inputs(args.vocab, args.tokens, args.hidden, args.dtype)
    step = step_fn(args.memory_probe, args.alpha, *inputs)
    common.reset_peak_rss()
    rss = common.rss_bytes()
    for _ in range(args.steps):
        step()
    common.report_memory(rss)


def main(argv=None):
    args = parse_args(argv)
    runtime.init_distributed()
    runtime.init_model_parallel(1, 1)
    if args.memory_probe:
        memory_probe(args)
        return
    names = args.candidates.split(",")
    print(f"fused projection + soft-target CE fwd+bwd: V={args.vocab}, n={args.tokens}, H={args.hidden}, {args.dtype}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    memory = {}
    for name in names:
        need, free = needed_bytes(name, args), psutil.virtual_memory().available
        if need > args.memory_fraction * free:
            print(f"  {name}: memory probe skipped, needs ~{common.gib(need)} GiB of {common.gib(free)} available")
            continue
        flags = ["--vocab", str(args.vocab), "--tokens", str(args.tokens), "--hidden", str(args.hidden),
                 "--alpha", str(args.alpha), "--steps", str(args.steps), "--dtype", args.dtype]
        memory[name] = common.probe_memory(os.path.abspath(__file__), name, flags)
        print(f"  {name}: step peak {common.gib(memory[name]['step_peak'])} GiB")
    times = {}
    if not args.no_timing:
        inputs = make_inputs(args.vocab, args.time_tokens or args.tokens, args.hidden, args.dtype)
        calls = {name: step_fn(name, args.alpha, *inputs) for name in names}
        losses = {name: calls[name]() for name in names}
        for name in names[1:]:
            print(f"  max |loss {names[0]} - loss {name}| = {(losses[names[0]] - losses[name]).abs().max():.1e}")
        times = common.time_alternating(calls, args.repeats, warmup=0)
    base = "naive" if "naive" in memory else None
    tbase = "naive" if "naive" in times else None
    n_time = args.time_tokens or args.tokens
    print(f"\n| candidate | step peak GiB | peak RSS GiB | × {base or 'n/a'} memory | wall s best / median "
          f"(n={n_time}) | CPU s best / median | × {tbase or 'n/a'} wall best / CPU best |\n" + "|---" * 7 + "|")
    for name in names:
        m, t = memory.get(name) or {}, times.get(name)
        ratio = f"{m['step_peak'] / memory[base]['step_peak']:.3f}" if base and m else "n/a"
        wall = f"{t['min']:.2f} / {t['median']:.2f}" if t else "n/a"
        cpu = f"{t['cpu']['min']:.2f} / {t['cpu']['median']:.2f}" if t else "n/a"
        speed = (f"{t['min'] / times[tbase]['min']:.2f} / {t['cpu']['min'] / times[tbase]['cpu']['min']:.2f}"
                 if t and tbase else "n/a")
        print(f"| {name} | {common.gib(m.get('step_peak'))} | {common.gib(m.get('peak_rss'))} | {ratio} | {wall} | "
              f"{cpu} | {speed} |")
    common.write_json(args.json, dict(bench="fused_linear_ce", dtype=args.dtype, vocab=args.vocab, tokens=args.tokens,
                                      hidden=args.hidden, machine=common.machine_record(), memory=memory,
                                      time_s=times))


if __name__ == "__main__":
    main()
