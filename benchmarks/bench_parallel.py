"""TP=2 and PP=2 against TP=1 on this machine: the real training loop (pretrain_vega.py, mock data), same model,
sequence and global batch, every layout given all the machine's cores (TP=1: one process with all threads; TP=2 /
PP=2: two processes with half the threads each).

Each layout runs ``--train-iters`` iterations under torchrun; the first logged iteration is warm-up and the
tokens/s of the others are summarised (the log line's own throughput: tokens of the global batch per second of
wall time). Layouts run in order, then in reverse order when --repeats is 2, so that a drifting background load
affects them alike. Peak memory is the log line's (the logging rank's process).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import common

LAYOUTS = {"TP1": (1, 1), "TP2": (2, 1), "PP2": (1, 2)}
LINE = re.compile(r"iteration\s+(\d+)/\d+ .*\| tokens/s ([\d,]+) .*\| peak mem ([\d.]+) GiB")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--global-batch-size", type=int, default=4)
    p.add_argument("--train-iters", type=int, default=3, help="including one warm-up iteration")
    p.add_argument("--repeats", type=int, default=1, choices=[1, 2])
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--json")
    return p.parse_args(argv)


def run_layout(args, name: str, log) -> dict:
    tp, pp = LAYOUTS[name]
    procs = tp * pp
    threads = max(1, (os.cpu_count() or 2) // procs)
    cmd = ["torchrun", "--nproc_per_node", str(procs), "--master_port", str(29600 + procs),
           os.path.join(common.REPO, "pretrain_vega.py"), "--model-preset", args.preset, "--mock-data",
           "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
           "--seq-length", str(args.seq), "--micro-batch-size", str(args.micro_batch_size),
           "--global-batch-size", str(args.global_batch_size), "--train-iters", str(args.train_iters),
           "--lr", "1e-4", "--log-interval", "1", "--eval-interval", str(10 * args.train_iters), "--eval-iters", "0"]
    log("$ OMP_NUM_THREADS=%d %s" % (threads, " ".join(cmd)))
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO,
                          env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [(int(i), float(t.replace(",", "")), float(m)) for i, t, m in LINE.findall(proc.stdout)]
    timed = [r for r in rows if r[0] > 1]
    log(f"  {name}: tokens/s {[r[1] for r in rows]} ({time.time() - start:.0f} s with start-up)")
    return {"tokens_per_s": [r[1] for r in timed], "peak_mem_gib": max(r[2] for r in rows), "threads": threads,
            "processes": procs}


def main(argv=None):
    args = parse_args(argv)
    names = args.layouts.split(",")
    results = {name: {"tokens_per_s": []} for name in names}
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            got = run_layout(args, name, print)
            results[name] = {**got, "tokens_per_s": results[name]["tokens_per_s"] + got["tokens_per_s"]}
    for res in results.values():
        res["median"] = statistics.median(res["tokens_per_s"])
    base = results.get("TP1", next(iter(results.values())))["median"]
    print(table(results, base))
    common.write_json(args.json, dict(bench="parallel", preset=args.preset, seq=args.seq,
                                      micro_batch_size=args.micro_batch_size,
                                      global_batch_size=args.global_batch_size, machine=common.machine_record(),
                                      results=results, command="python benchmarks/bench_parallel.py "
                                      + " ".join(argv if argv is not None else sys.argv[1:])))


def table(results: dict, base: float) -> str:
    rows = ["| layout | processes x threads | tokens/s (min / median / max) | vs TP=1 | peak mem GiB (logging rank) |",
            "|---|---|---|---|---|"]
    for name, r in results.items():
        t = r["tokens_per_s"]
        rows.append(f"| {name} | {r['processes']} x {r['threads']} | {min(t):.1f} / {r['median']:.1f} / {max(t):.1f}"
                    f" | {r['median'] / base:.2f}x | {r['peak_mem_gib']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
