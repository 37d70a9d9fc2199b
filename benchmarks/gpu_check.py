"""One command that proves the Triton kernels on a real GPU (docs/triton.md, "GPU check"), under 8 minutes on one H100:

  1. kernels against the torch path in bf16 at real shapes (attention core vs the SDPA core, the fused layer pieces
     vs torch, the fused projection + soft-target CE with its Triton chunk kernels vs the logits op);
  2. one ``base`` training step with ``--attention-backend triton`` against ``sdpa`` (loss and grad norm);
  3. attention forward + backward at h = 12, d = 64, s in {512, 2048}: the Triton core, the SDPA-with-bias core,
     Hugging Face's eager DebertaV2 attention and, when its wheel is installed, disentangled-flash; time and peak
     memory;
and writes a markdown table (``--out``). ``--dry-run`` (any machine) lists the checks, what each needs and what
must be carried; ``--cpu-smoke`` runs every check at tiny shapes on CPU under Triton's interpreter (fp32; the base
step compares the cpu and sdpa cores, the triton core being CUDA-only), to prove the script itself before a GPU.

The GPU image has Python 3.12 with its own torch and Triton but no megatron-core, transformers or sentencepiece:
``--wheels DIR`` installs them from carried wheels (no network there); ``--download-wheels DIR`` fills DIR here.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the GPU image lacks. megatron-core goes without its dependencies (torch, numpy, packaging: the image's).
WHEELS_NO_DEPS = ("megatron-core==0.16.1",)
WHEELS = ("sentencepiece==0.2.3", "transformers==5.23.0", "safetensors==0.8.0", "psutil")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
BASE_NEEDS = "torch + triton (the image's), this repo, megatron-core"
CHECKS = (  # name, what it runs, what it needs beyond BASE_NEEDS
    ("attention-bf16", "Triton core vs SDPA core, bf16, b=2 h=12 d=64 s=512 (deep prompt 8, prefix+causal mask, "
                       "padding) and d=128 s=130 (block mask): output and every gradient, max |diff| / max |ref|",
     "-"),
    ("layer-bf16", "bias+GELU [4096, 3072] and dropout(0)+residual+LayerNorm [4096, 768] vs torch, bf16, fwd+bwd",
     "-"),
    ("soft-target-ce", "fused projection + soft-target CE (Triton chunk kernels) vs projection + logits op, "
                       "V=128100 n=2048 H=1024, fp32 (exact GEMMs) and bf16: the weighted loss and grads of hidden "
                       "states and weight; time and peak memory", "-"),
    ("base-step", "pretrain_vega.py --model-preset base --mock-data --bf16, 2 iterations, seq 512, micro-batch 8, "
                  "dropout 0: triton vs sdpa loss / grad norm / tokens/s / peak memory",
     "sentencepiece (imported by the data package), psutil"),
    ("attention-timing", "fwd+bwd bf16 h=12 d=64, s=512 (b=16) and s=2048 (b=4): triton core, SDPA-with-bias core, "
                         "HF eager DisentangledSelfAttention (includes its QKV projections), disentangled-flash "
                         "(if importable); median ms and peak memory",
     "transformers, safetensors (HF eager); a disentangled-flash wheel (optional column)"),
)


class Mode:
    """Where and at what size the checks run: the real GPU check, or the tiny CPU smoke run (interpreter, fp32)."""
    def __init__(self, smoke: bool):
        import torch
        self.smoke, self.device = smoke, "cpu" if smoke else "cuda"
        self.low = torch.float32 if smoke else torch.bfloat16  # the interpreter's tl.dot has no bf16
        self.attention_cases = (((1, 2, 17, 16, 3, "prefix_causal"), (1, 2, 9, 32, 0, "blocks")) if smoke else
                                ((2, 12, 512, 64, 8, "prefix_causal"), (2, 12, 130, 128, 0, "blocks")))
        self.layer_rows, self.ffn, self.hidden = (64, 48, 32) if smoke else (4096, 3072, 768)
        self.ce = (300, 40, 16) if smoke else (128100, 2048, 1024)  # V, n, H
        self.timing = ((32, 1),) if smoke else ((512, 16), (2048, 4))  # (s, b)
        self.step_flags = (["--model-preset", "tiny", "--seq-length", "32", "--micro-batch-size", "2"] if smoke else
                           ["--model-preset", "base", "--bf16", "--seq-length", "512", "--micro-batch-size", "8"])
        self.step_cores = ("cpu", "sdpa") if smoke else ("triton", "sdpa")


MODE: Mode | None = None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="list the checks and what must be carried; run nothing")
    p.add_argument("--wheels", help="a folder of Python 3.12 wheels to install first (see --dry-run)")
    p.add_argument("--download-wheels", metavar="DIR", help="download the Python 3.12 wheels to carry into DIR (here, "
                                                            "with network) and exit")
    p.add_argument("--cpu-smoke", action="store_true", help="every check at tiny shapes on CPU (Triton interpreter)")
    p.add_argument("--out", default="gpu_check.md", help="markdown table written here")
    p.add_argument("--only", help="comma-separated check names (default: all)")
    p.add_argument("--repeats", type=int, default=10)
    return p.parse_args(argv)


def _download_commands(folder: str) -> list[list[str]]:
    common = ["download", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
              *(f"--platform={p}" for p in PLATFORMS), "-d", folder]
    return [[*common, "--no-deps", *WHEELS_NO_DEPS], [*common, *WHEELS]]


def dry_run() -> None:
    print("GPU check: what it runs (and needs beyond " + BASE_NEEDS + ")\n")
    for name, what, needs in CHECKS:
        print(f"  {name:17s} {what}\n  {'':17s} needs: {needs}")
    print("\nWhat must be carried to the GPU machine (Python 3.12, its own torch + triton, no network):")
    print("  - this repository (working tree; run with PYTHONPATH=<repo>)")
    print("  - wheels/: cp312 manylinux x86-64 wheels, made here by `python benchmarks/gpu_check.py "
          "--download-wheels wheels`, i.e.")
    for cmd in _download_commands("wheels"):
        print("      pip " + " ".join(cmd))
    print("    (megatron-core, sentencepiece, transformers and its dependencies, safetensors, psutil; numpy may be "
          "dropped: the image has it)")
    print("  - optional: a disentangled-flash wheel in wheels/ (the attention timing then includes it)")
    print("\nOn the GPU:  PYTHONPATH=$PWD python benchmarks/gpu_check.py --wheels wheels --out gpu_check.md")
    print("Here first:  PYTHONPATH=$PWD python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check_smoke.md")


def download_wheels(folder: str) -> None:
    for cmd in _download_commands(folder):
        subprocess.run([sys.executable, "-m", "pip", *cmd], check=True)
    print(f"{len(os.listdir(folder))} files in {folder}")


def install_wheels(folder: str) -> None:
    names = [w.split("==")[0] for w in WHEELS_NO_DEPS + WHEELS]
    names += [n for n in ("disentangled-flash",) if any(f.startswith("disentangled_flash") for f in os.listdir(folder))]
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", folder]
    subprocess.run([*pip, "--no-deps", *WHEELS_NO_DEPS], check=True)
    subprocess.run([*pip, *names[len(WHEELS_NO_DEPS):]], check=True)


# -- helpers ----------------------------------------------------------------------------------------------------
def rel_err(got, want) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-12)).item()


def grads(out, leaves, seed=0):
    import torch
    g = torch.randn(out.shape, generator=torch.Generator(device=out.device).manual_seed(seed), device=out.device)
    return torch.autograd.grad(out, leaves, g.to(out.dtype), allow_unused=True)


def timed(fn, repeats: int):
    """(median ms, peak MiB above the start) of fn() on the GPU; on the CPU smoke run (median ms, nan)."""
    import torch
    fn()
    if MODE.device == "cpu":
        times = []
        for _ in range(min(repeats, 2)):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
        return sorted(times)[len(times) // 2], float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated() - base) / 2 ** 20


# -- the checks -------------------------------------------------------------------------------------------------
def attention_inputs(b, h, s, d, prefix, mask_kind, dtype, span=256):
    import torch

    from megatron_vega.model.attention_inputs import AttentionInputs
    dev = MODE.device
    pad = torch.ones(b, s, dtype=torch.long, device=dev)
    pad[-1, s * 3 // 4:] = 0
    fields = {"prefix_lengths": torch.full((b,), s // 4, device=dev)} if mask_kind == "prefix_causal" else {}
    if mask_kind == "blocks":
        fields = {"block_ids": (torch.arange(s, device=dev) * 4 // s).expand(b, s)}
    qkv = (torch.randn(3, b, h, s, d, device=dev) * 0.5).to(dtype).requires_grad_()
    pk, pq = ((torch.randn(h, 2 * span, d, device=dev) * 0.5).to(dtype).requires_grad_() for _ in range(2))
    pre = [(torch.randn(b, h, prefix, d, device=dev) * 0.5).to(dtype).requires_grad_() for _ in range(2)] \
        if prefix else None
    inputs = AttentionInputs(pad, **fields, prefix=None if pre is None else [tuple(pre)])
    index, mask = inputs.relative_index(256, 512, span), inputs.mask_bias(dtype)
    return qkv, pk, pq, pre, index, mask


def check_attention_bf16(rows, repeats):

    from megatron_vega.ops.attention import CORES
    for b, h, s, d, prefix, kind in MODE.attention_cases:
        qkv, pk, pq, pre, index, mask = attention_inputs(b, h, s, d, prefix, kind, MODE.low)
        scale = 1 / (3 * d) ** 0.5
        leaves = [qkv, pk, pq, *(pre or [])]
        outs = {}
        for core in ("triton", "sdpa"):
            out = CORES[core](qkv, *(pre or (None, None)), pk * scale, pq * scale, index, mask, 0.0, scale)
            outs[core] = (out, grads(out, leaves))
        errs = [rel_err(outs["triton"][0], outs["sdpa"][0])]
        errs += [rel_err(g, r) for g, r in zip(outs["triton"][1], outs["sdpa"][1])]
        rows.append(("attention-bf16", f"b={b} h={h} s={s} d={d} prefix={prefix} {kind}",
                     "out/qkv/Kr/Qr/prefix rel err " + ", ".join(f"{e:.1e}" for e in errs),
                     "ok" if max(errs) < 3e-2 else "FAIL"))


def check_layer_bf16(rows, repeats):
    import torch
    import torch.nn.functional as F

    from megatron_vega.ops import fused_layer
    rows_n, ffn, hid, dev, dt = MODE.layer_rows, MODE.ffn, MODE.hidden, MODE.device, MODE.low
    x = torch.randn(rows_n, ffn, device=dev, dtype=dt, requires_grad=True)
    bias = torch.randn(ffn, device=dev, dtype=dt, requires_grad=True)
    out, ref = fused_layer.bias_gelu(x, bias), F.gelu(x.float() + bias.float())
    errs = [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads(out, [x, bias]), grads(ref, [x, bias]))]
    t_fused, _ = timed(lambda: grads(fused_layer.bias_gelu(x, bias), [x, bias]), repeats)
    t_torch, _ = timed(lambda: grads(F.gelu(x + bias), [x, bias]), repeats)
    rows.append(("layer-bf16", f"bias+GELU [{rows_n}, {ffn}]", "rel err " + ", ".join(f"{e:.1e}" for e in errs) +
                 f"; fwd+bwd {t_fused:.3f} ms vs torch {t_torch:.3f} ms", "ok" if max(errs) < 2e-2 else "FAIL"))
    x, res = (torch.randn(rows_n, hid, device=dev, dtype=dt, requires_grad=True) for _ in range(2))
    norm = torch.nn.LayerNorm(hid, device=dev, dtype=dt)
    leaves = [x, res, norm.weight, norm.bias]
    out = fused_layer.dropout_add_layer_norm(x, res, norm, 0.0, True)
    ref = F.layer_norm(res.float() + x.float(), (hid,), norm.weight.float(), norm.bias.float(), norm.eps)
    errs = [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads(out, leaves), grads(ref, leaves))]
    t_fused, _ = timed(lambda: grads(fused_layer.dropout_add_layer_norm(x, res, norm, 0.1, True), leaves), repeats)
    t_torch, _ = timed(lambda: grads(norm(res + F.dropout(x, 0.1)), leaves), repeats)
    rows.append(("layer-bf16", f"dropout+residual+LayerNorm [{rows_n}, {hid}]", "rel err " +
                 ", ".join(f"{e:.1e}" for e in errs) + f"; fwd+bwd (p=0.1) {t_fused:.3f} ms vs torch {t_torch:.3f} ms",
                 "ok" if max(errs) < 2e-2 else "FAIL"))


def check_soft_target_ce(rows, repeats):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        _soft_target_case(rows, repeats, dtype, tolerance)


def _soft_target_case(rows, repeats, dtype, tolerance):
    import torch
    import torch.nn.functional as F

    from megatron_vega.ops.fused_linear_cross_entropy import fused_linear_soft_target_cross_entropy
    from megatron_vega.ops.smoothed_cross_entropy import smoothed_vocab_parallel_cross_entropy
    from megatron_vega.ops.triton import soft_target_kernels
    v, n, hdim = MODE.ce
    dev = MODE.device
    gen = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(n, hdim, device=dev, generator=gen).to(dtype).requires_grad_()
    h_ref = h.detach() + (0.3 * torch.randn(n, hdim, device=dev, generator=gen)).to(dtype)
    w = (torch.randn(v, hdim, device=dev, generator=gen) * hdim ** -0.5).to(dtype).requires_grad_()
    target = torch.randint(0, v, (n,), device=dev, generator=gen)
    weights = torch.rand(n, device=dev, generator=gen)

    def fused():  # the Triton chunk kernels also on the CPU smoke run (the op picks them on CUDA only)
        return fused_linear_soft_target_cross_entropy(
            h, h_ref, w, None, target, 0.5, v, token_weights=weights,
            chunk_ops=(soft_target_kernels.chunk_stats, soft_target_kernels.chunk_grad)).loss

    def logits_op():  # the MLM head's projection (fp32 logits), then the logits op
        with torch.no_grad():
            y = F.linear(h_ref, w).float()
        losses = smoothed_vocab_parallel_cross_entropy(F.linear(h, w).float(), y, target, 0.5, vocab_size=v)
        return (losses * weights).sum()
    results = {}
    for name, fn in (("fused", fused), ("logits_op", logits_op)):
        loss = fn()
        results[name] = (loss, torch.autograd.grad(loss, [h, w]))
        results[name] += timed(lambda fn=fn: torch.autograd.grad(fn(), [h, w]), max(2, repeats // 3))
    f, r = results["fused"], results["logits_op"]
    errs = [rel_err(f[0], r[0])] + [rel_err(a, b) for a, b in zip(f[1], r[1])]
    rows.append(("soft-target-ce", f"V={v} n={n} H={hdim} {str(dtype)[6:]}", "rel err loss/dH/dW " +
                 ", ".join(f"{e:.1e}" for e in errs) + f"; {f[2]:.1f} ms / {f[3]:.0f} MiB vs logits op "
                 f"{r[2]:.1f} ms / {r[3]:.0f} MiB (time {f[2] / r[2]:.2f}x, memory {f[3] / r[3]:.2f}x)",
                 "ok" if max(errs) < tolerance else "FAIL"))


def check_base_step(rows, repeats):
    stats = {}
    for core in MODE.step_cores:
        cmd = [sys.executable, "pretrain_vega.py", *MODE.step_flags, "--mock-data", "--train-iters", "2",
               "--log-interval", "1", "--hidden-dropout", "0", "--attention-dropout", "0", "--attention-backend", core]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                              env={**os.environ, "PYTHONPATH": REPO})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("iteration")]
        if proc.returncode or not lines:
            rows.append(("base-step", core, f"failed: {(proc.stderr or proc.stdout)[-300:]!r}", "FAIL"))
            return
        fields = dict(re.findall(r"(loss|grad norm|tokens/s|peak mem) ([\d.]+)", lines[0]))
        fields["tokens/s"] = dict(re.findall(r"(tokens/s) ([\d.]+)", lines[-1])).get("tokens/s", "n/a")
        stats[core] = fields
    (a, t), (b, s) = ((core, stats[core]) for core in MODE.step_cores)
    diff = abs(float(t["loss"]) - float(s["loss"])) / float(s["loss"])
    show = lambda f: " / ".join(f.get(k, "n/a") for k in ("loss", "grad norm", "tokens/s", "peak mem"))  # noqa: E731
    rows.append(("base-step", "iteration 1 loss / grad norm; iteration 2 tokens/s; peak GiB",
                 f"{a} {show(t)}; {b} {show(s)}",
                 "ok" if diff < 1e-2 else "FAIL"))  # bf16 attention numerics: relative, not bitwise


def _hf_attention(b, s, dtype):
    import torch
    from transformers import DebertaV2Config
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention
    cfg = DebertaV2Config(hidden_size=12 * 64, num_attention_heads=12, relative_attention=True, position_buckets=256,
                          max_relative_positions=512, pos_att_type=["c2p", "p2c"], share_att_key=True,
                          attention_probs_dropout_prob=0.0)
    module = DisentangledSelfAttention(cfg).to(MODE.device, dtype)
    x = torch.randn(b, s, 768, device=MODE.device, dtype=dtype, requires_grad=True)
    rel = torch.randn(512, 768, device=MODE.device, dtype=dtype)
    mask = torch.ones(b, 1, s, s, device=MODE.device, dtype=torch.bool)
    return module, x, rel, mask, cfg


def _attention_cells(s: int, b: int, repeats: int) -> dict:
    """name -> (median ms, peak MiB) or an error line, for one sequence length."""
    import torch

    from megatron_vega.ops.attention import CORES
    qkv, pk, pq, _, index, mask = attention_inputs(b, 12, s, 64, 0, "padding", MODE.low)
    cells = {}
    for core in ("triton", "sdpa"):
        def step(core=core):
            out = CORES[core](qkv, None, None, pk * 0.07, pq * 0.07, index, mask, 0.0, 0.07)
            return grads(out, [qkv, pk, pq])
        cells[core] = timed(step, repeats)
    try:
        module, x, rel, hf_mask, cfg = _hf_attention(b, s, MODE.low)
        cells["hf eager"] = timed(lambda: grads(module(x, hf_mask, rel_embeddings=rel)[0], [x]), repeats)
    except Exception as err:  # noqa: BLE001 - a broken optional comparison is reported, not fatal
        cells["hf eager"] = f"error: {err}"[:120]
        return cells
    try:
        from disentangled_flash import optimize_deberta  # optional: only when its wheel was carried
    except ImportError:
        return cells
    from transformers import DebertaV2Model
    model = DebertaV2Model(cfg.__class__(**{**cfg.to_dict(), "num_hidden_layers": 1})).to("cuda", torch.bfloat16)
    optimize_deberta(model, sequence_lengths=[s])
    ids = torch.randint(0, 1000, (b, s), device="cuda")
    cells["disentangled-flash (1-layer model)"] = timed(
        lambda: model(ids).last_hidden_state.float().sum().backward(), repeats)
    return cells


def check_attention_timing(rows, repeats):
    for s, b in MODE.timing:
        cells = _attention_cells(s, b, repeats)
        base = cells["sdpa"]
        for name, cell in cells.items():
            if isinstance(cell, str):
                rows.append(("attention-timing", f"s={s} b={b} {name}", cell, "n/a"))
                continue
            ms, mib = cell
            memory = f"{mib / base[1]:.2f}x" if base[1] > 0 else "n/a"
            rows.append(("attention-timing", f"s={s} b={b} {name}", f"{ms:.2f} ms, peak {mib:.0f} MiB "
                         f"(speed-up vs sdpa {base[0] / ms:.2f}x, memory {memory})", "measured"))


RUNNERS = {"attention-bf16": check_attention_bf16, "layer-bf16": check_layer_bf16,
           "soft-target-ce": check_soft_target_ce, "base-step": check_base_step,
           "attention-timing": check_attention_timing}


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        dry_run()
        return
    if args.download_wheels:
        download_wheels(args.download_wheels)
        return
    if args.wheels:
        install_wheels(args.wheels)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    import torch
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --dry-run to list the checks, --cpu-smoke to try them on CPU)")
    global MODE
    MODE = Mode(args.cpu_smoke)
    sys.path.insert(0, REPO)
    from megatron_vega import runtime
    runtime.init_distributed()
    runtime.init_model_parallel(1, 1)
    rows, started = [], time.time()
    for name in (args.only.split(",") if args.only else RUNNERS):
        t = time.time()
        try:
            RUNNERS[name](rows, args.repeats)
        except Exception as err:  # noqa: BLE001 - every check reports, one failure does not hide the others
            rows.append((name, "", f"error: {type(err).__name__}: {err}"[:300], "FAIL"))
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
    import triton
    device = "CPU smoke run (Triton interpreter, fp32, tiny shapes)" if args.cpu_smoke else torch.cuda.get_device_name()
    table = [f"GPU check on {device} (torch {torch.__version__}, triton {triton.__version__}), "
             f"{time.time() - started:.0f} s", "", "| check | case | result | verdict |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"device": device, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
