"""Shared benchmark pieces: machine record, GEMM peak, alternating timer, per-candidate peak memory.

A benchmark here measures *ratios against a baseline in the same run*: candidate and baseline are timed in
alternation (A B B A ...), so a background load (another job on the same cores) hits both about equally.
Absolute figures on a shared 2-core machine are noisy; the ratio is the figure to quote. Besides wall time the
timer records the process's CPU time (user + sys, all threads) per call: less sensitive to other jobs (it does
not count time spent waiting for a core), though it includes OpenMP spin-waiting.

Peak memory: each candidate runs in a fresh subprocess (``python <bench> --memory-probe NAME``) and reports
  * ``rss_setup``: resident set after imports, model and optimizer construction (psutil RSS); the high-water
    mark is then reset (reset_peak_rss),
  * ``peak_rss``: the RSS high-water mark (/proc/self/status VmHWM) over two training steps,
  * ``step_peak`` = peak_rss - rss_setup: what the steps themselves add (activations, grads, optimizer state,
    allocator slack). glibc may keep freed pages, so this is an upper bound, but it is the same for both.
No tracemalloc (it does not see ATen allocations).
"""
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# -- machine record ---------------------------------------------------------------------------------------------
def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    info.setdefault(k, v)
    except OSError:
        pass
    return info


def machine_record() -> dict:
    import megatron.core
    import transformers
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    isa = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    try:
        mcore = megatron.core.__version__
    except AttributeError:
        from importlib.metadata import version
        mcore = version("megatron-core")
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu.get("model name", platform.processor()),
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "isa_flags": " ".join(isa) or "none reported",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "megatron_core": mcore,
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def format_record(rec: dict) -> str:
    return "\n".join(f"| {k} | {v} |" for k, v in rec.items())


# -- GEMM peak --------------------------------------------------------------------------------------------------
def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5, budget_s: float = 30.0) -> dict:
    """Best-of-``repeats`` n^3 GEMM in GFLOP/s, the fastest of ``a @ b`` (aten::mm), ``F.linear`` (aten::addmm,
    which MKL serves on its own path: for bf16 on AVX2-only CPUs ~10x faster than mm) and, for bf16/fp16 where
    the CPU has no bf16 matrix units, the framework's route (runtime.in_fp32: upcast, fp32 GEMM, round back).
    ``native_gflops``: the best of the dtype's own kernels (mm, linear). A path 4x slower than the best at 512^3
    is not timed at full size (its 512^3 figure stands); if one product would still blow the time budget, the
    size is reduced and reported."""
    from megatron_vega import runtime

    def paths(a, b):
        out = {"mm": lambda: a @ b, "linear": lambda: torch.nn.functional.linear(a, b)}
        if dtype != torch.float32 and not runtime.low_precision_gemm_native(dtype):
            out["fp32 route"] = lambda: runtime.in_fp32(torch.nn.functional.linear, a, b)
        return out

    def best_time(f, reps):
        f()  # warm-up (first use initialises the library)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t)
        return best

    small = {k: best_time(f, 2) for k, f in paths(*(torch.randn(512, 512, dtype=dtype) for _ in range(2))).items()}
    keep = [k for k, t in small.items() if t <= 4 * min(small.values())]
    t512 = min(small.values())
    while n > 512 and t512 * (n / 512) ** 3 * (repeats + 1) * len(keep) > budget_s:
        n //= 2
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    gflops = {k: 2 * 512 ** 3 / t / 1e9 for k, t in small.items()}
    gflops.update({k: 2 * n ** 3 / best_time(f, repeats) / 1e9 for k, f in paths(a, b).items() if k in keep})
    best = max(gflops, key=gflops.get)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "gflops": gflops[best], "path": best,
            "native_gflops": max(gflops["mm"], gflops["linear"])}


class PeakSampler:
    """GEMM peak sampled at the start and between timing rounds. The max is the machine's capability during the
    run (used for MFU); a min far below it means another job was competing for the cores."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.samples = dtype, []

    def __call__(self):
        r = gemm_peak(self.dtype, repeats=3, budget_s=15.0)
        self.samples.append(r)
        return r

    def summary(self) -> dict:
        g = [r["gflops"] for r in self.samples]
        best = self.samples[g.index(max(g))]
        return {"dtype": best["dtype"], "n": best["n"], "gflops": max(g), "min_gflops": min(g), "samples": len(g),
                "path": best["path"], "native_gflops": max(r["native_gflops"] for r in self.samples)}


def tune_malloc() -> None:
    """glibc malloc: serve big blocks from the heap and keep freed memory instead of mmap/munmap per tensor.
    By default every tensor above 32 MiB (e.g. a [4, 12, 512, 512] fp32 score tensor) is a fresh mmap, so each
    use pays page faults and kernel zeroing (high sys time). Equivalent to MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=2147483647; RSS then stays at its high-water mark."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD


# -- alternating timer ------------------------------------------------------------------------------------------
def summarize(times: list[float]) -> dict:
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "n": len(times),
            "times": times}


def time_alternating(candidates: dict, repeats: int, warmup: int = 1, log=print, between=None) -> dict:
    """candidates: name -> zero-argument callable (one measured unit, e.g. a training step).
    Warm-up calls are not timed. Timed rounds alternate the order (A B, B A, ...) so neither side always runs
    right after the other. ``between()`` (e.g. a GEMM-peak sample) runs before each round.
    Returns name -> summarize(times)."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            t = time.perf_counter()
            candidates[name]()
            log(f"  warm-up {name}: {time.perf_counter() - t:.2f} s")
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeats):
        if between is not None:
            between()
        for name in (names if r % 2 == 0 else names[::-1]):
            t, c = time.perf_counter(), time.process_time()
            candidates[name]()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            log(f"  repeat {r + 1}/{repeats} {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU")
    return {name: {**summarize(ts), "cpu": summarize(cpu[name])} for name, ts in times.items()}


# -- peak memory ------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def max_rss_bytes() -> int:
    """This process's RSS high-water mark. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a
    child of a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Reset the high-water mark to the current RSS (Linux: "5" to /proc/self/clear_refs), so that the peak
    counts only what follows (not setup transients such as weight initialisation)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def report_memory(rss_setup: int) -> None:
    """Called at the end of a --memory-probe subprocess: one JSON line on stdout for the parent."""
    peak = max_rss_bytes()
    print("MEMORY " + json.dumps({"rss_setup": rss_setup, "peak_rss": peak, "step_peak": peak - rss_setup}))


def probe_memory(script: str, name: str, args: list[str], timeout: float = 3600) -> dict | None:
    """Run ``script --memory-probe name *args`` in a fresh interpreter; parse its MEMORY line."""
    cmd = [sys.executable, script, "--memory-probe", name, *args]
    # The parent's world-of-one rendezvous (MASTER_PORT) is still bound: let the child pick its own port.
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY "):])
    sys.stderr.write(f"memory probe {name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}\n")
    return None


def gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2 ** 30:.2f}"


def write_json(path: str | None, obj) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=1, default=str)
