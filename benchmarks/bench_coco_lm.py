"""COCO-LM vs MLM pretraining throughput: ``pretrain_vega.py --objective coco-lm`` against ``--objective mlm`` at one
preset, same data shape, one process each (TP=1), interleaved rounds (mlm, coco-lm, mlm, coco-lm, ...) so that a
machine shared with other jobs loads both alike.

Per run: the trainer's own log (tokens/s and peak memory per step; step 1, the warm-up, is dropped), the process's
CPU time, and the objective's model FLOPs per token (training/flops.py; COCO-LM's include the generator). Reports
per objective the best step's tokens/s over all rounds, the median, peak memory, CPU seconds per 1k trained tokens,
and the ratios coco-lm / mlm next to the FLOPs ratio: a throughput ratio near mlm_flops / coco_flops means the
generator costs what its FLOPs say.

  python benchmarks/bench_coco_lm.py --preset base --seq-length 128 --micro-batch-size 4 --steps 4 --rounds 2
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_STEP = re.compile(r"iteration\s+(\d+)/.*?tokens/s ([\d,]+).*?peak mem ([\d.]+) GiB")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="steps per run (the first is warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="runs per objective, interleaved")
    p.add_argument("--json", help="write the results here")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="further pretrain_vega.py flags (after --)")
    return p.parse_args(argv)


def flops_per_token(objective: str, args) -> float:
    from megatron_vega.objectives.arguments import build_objective, build_parser, run_config
    argv = ["--objective", objective, "--model-preset", args.preset, "--mock-data", "--seq-length",
            str(args.seq_length), "--micro-batch-size", str(args.micro_batch_size)]
    return build_objective(run_config(build_parser("").parse_args(argv + args.extra))).flops_per_token()


def one_run(objective: str, args) -> dict:
    command = [sys.executable, str(REPO / "pretrain_vega.py"), "--objective", objective, "--model-preset",
               args.preset, "--mock-data", "--seq-length", str(args.seq_length), "--micro-batch-size",
               str(args.micro_batch_size), "--global-batch-size", str(args.micro_batch_size), "--train-iters",
               str(args.steps), "--log-interval", "1", "--lr", "1e-4", *[a for a in args.extra if a != "--"]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"{objective} failed:\n{result.stderr[-3000:]}")
    steps = [(int(i), float(t.replace(",", "")), float(m)) for i, t, m in _STEP.findall(result.stdout)]
    timed = [s for s in steps if s[0] > 1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"tokens_per_s": [t for _, t, _ in timed], "peak_gib": max(m for _, _, m in steps), "cpu_s": cpu,
            "tokens": args.steps * args.micro_batch_size * args.seq_length}


def main(argv=None) -> None:
    args = parse_args(argv)
    results = {name: [] for name in ("mlm", "coco-lm")}
    for _ in range(args.rounds):
        for name in results:
            results[name].append(one_run(name, args))
    table = {}
    for name, runs in results.items():
        speeds = [t for r in runs for t in r["tokens_per_s"]]
        table[name] = {"best_tokens_per_s": max(speeds), "median_tokens_per_s": statistics.median(speeds),
                       "peak_gib": max(r["peak_gib"] for r in runs),
                       "cpu_s_per_1k_tokens": min(1000 * r["cpu_s"] / r["tokens"] for r in runs),
                       "gflops_per_token": flops_per_token(name, args) / 1e9}
    mlm, coco = table["mlm"], table["coco-lm"]
    ratios = {"tokens_per_s (best)": coco["best_tokens_per_s"] / mlm["best_tokens_per_s"],
              "cpu_s per token": coco["cpu_s_per_1k_tokens"] / mlm["cpu_s_per_1k_tokens"],
              "peak memory": coco["peak_gib"] / mlm["peak_gib"],
              "FLOPs per token": coco["gflops_per_token"] / mlm["gflops_per_token"]}
    print(f"preset {args.preset}, seq {args.seq_length}, micro-batch {args.micro_batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds per objective (step 1 dropped), TP=1, one process, {' '.join(args.extra)}")
    print("| objective | best tokens/s | median tokens/s | peak memory GiB | CPU s / 1k tokens | GFLOP / token |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['best_tokens_per_s']:,.0f} | {row['median_tokens_per_s']:,.0f} | "
              f"{row['peak_gib']:.2f} | {row['cpu_s_per_1k_tokens']:.2f} | {row['gflops_per_token']:.3f} |")
    print("coco-lm / mlm: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
          + f"; throughput x FLOPs ratio {ratios['tokens_per_s (best)'] * ratios['FLOPs per token']:.3f} "
          "(1 = the generator costs exactly its FLOPs)")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "ratios": ratios, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
