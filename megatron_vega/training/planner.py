"""Every TP x PP x DP layout of a model on N GPUs with its memory per rank and what it costs (tools/plan_training.py).

The arithmetic is flops.py's (train_flops_per_token, recompute_flops_per_token, memory_per_rank) and the layout
rules are ParallelConfig.validate's and the sampler's; this module only enumerates, ranks and formats.
"""
from megatron_vega.config import ModelConfig, ParallelConfig
from megatron_vega.data.sampler import check_batch_sizes
from megatron_vega.errors import VegaInputError
from megatron_vega.model.parameter_count import count_parameters
from megatron_vega.training.flops import memory_per_rank, recompute_flops_per_token, train_flops_per_token

# Memory as nvidia-smi reports it (GiB) and the dense bf16/fp16 tensor-core peak (TFLOP/s, SXM parts).
GPUS = {
    "a100-40gb": (40.0, 312.0),
    "a100-80gb": (80.0, 312.0),
    "h100-80gb": (80.0, 989.0),
    "h200-141gb": (140.0, 989.0),
    "b200-180gb": (179.0, 2250.0),
}
RECOMPUTE = (None, "selective", "full")
GIB = 2 ** 30


def model_layouts(cfg: ModelConfig, gpus: int, gpus_per_node: int):
    """(TP, PP, DP) that ParallelConfig.validate accepts, with TP inside a node (TP divides the GPUs per node)."""
    for tp in range(1, min(gpus, gpus_per_node) + 1):
        if gpus_per_node % tp:
            continue
        for pp in range(1, cfg.num_layers + 1):
            try:
                dp = ParallelConfig(tp, pp).validate(cfg, gpus)
            except VegaInputError:
                continue
            yield tp, pp, dp


def _batch_fits(global_batch: int, micro_batch: int, dp: int) -> bool:
    try:
        check_batch_sizes(global_batch, micro_batch, dp)
    except VegaInputError:
        return False
    return True


def _nearest_batch(layouts, global_batch: int, micro_batch: int) -> int:
    return min(-(-global_batch // (micro_batch * dp)) * micro_batch * dp for _, _, dp in layouts)


def check_inputs(gpus, gpus_per_node, gpu_memory_gib, peak_tflops, mfu, train_iters, global_batch, seq_length,
                 micro_batch, precision, mask_prob) -> None:
    """One VegaInputError naming the flag for the first impossible setting."""
    positive = [("--gpus", gpus), ("--gpus-per-node", gpus_per_node), ("--gpu-memory-gib", gpu_memory_gib),
                ("--train-iters", train_iters), ("--global-batch-size", global_batch),
                ("--micro-batch-size", micro_batch)]
    for flag, value in positive:
        if value is None or value <= 0:
            raise VegaInputError(flag, f"must be positive, got {value}")
    if peak_tflops is None or peak_tflops <= 0:
        raise VegaInputError("--peak-tflops", f"must be positive (or give --gpu), got {peak_tflops}")
    if not 0 < mfu <= 1:
        raise VegaInputError("--mfu", f"must be in (0, 1], got {mfu}")
    if not 0 < mask_prob <= 1:
        raise VegaInputError("--mask-prob", f"must be in (0, 1], got {mask_prob}")
    if seq_length < 3:
        raise VegaInputError("--seq-length", f"must be at least 3 ([CLS], one token, [SEP]), got {seq_length}")
    if precision not in ("bf16", "fp16", "fp32"):
        raise VegaInputError("--precision", f"must be bf16, fp16 or fp32, got {precision!r}")
    if global_batch % micro_batch:
        raise VegaInputError("--global-batch-size", f"{global_batch} is not a multiple of --micro-batch-size "
                                                    f"({micro_batch})")


def plan(cfg: ModelConfig, gpus: int, gpu_memory_gib: float, peak_tflops: float, mfu: float, train_iters: int,
         global_batch: int, seq_length: int = 512, micro_batch: int = 4, precision: str = "bf16",
         gpus_per_node: int = 8, mask_prob: float = 0.15, reserve_gib: float = 4.0) -> dict:
    """The summary (FLOPs per token and step, days at the stated MFU) and every valid layout, best first."""
    check_inputs(gpus, gpus_per_node, gpu_memory_gib, peak_tflops, mfu, train_iters, global_batch, seq_length,
                 micro_batch, precision, mask_prob)
    if reserve_gib < 0 or reserve_gib >= gpu_memory_gib:
        raise VegaInputError("--reserve-gib", f"must be in [0, --gpu-memory-gib), got {reserve_gib}")
    model_valid = list(model_layouts(cfg, gpus, gpus_per_node))
    valid = [(tp, pp, dp) for tp, pp, dp in model_valid if _batch_fits(global_batch, micro_batch, dp)]
    if not valid:
        dps = sorted({dp for _, _, dp in model_valid}, reverse=True)
        raise VegaInputError("--global-batch-size", (
            f"{global_batch} is not a multiple of --micro-batch-size ({micro_batch}) x DP for any layout of {gpus} "
            f"GPUs (DP = {gpus}/(TP*PP) in {dps}); the nearest that is: "
            f"{_nearest_batch(model_valid, global_batch, micro_batch)}"))
    model_flops = train_flops_per_token(cfg, seq_length, mask_prob, micro_batch_size=micro_batch)
    tokens_per_step = global_batch * seq_length
    seconds = train_iters * tokens_per_step * model_flops / (gpus * peak_tflops * 1e12 * mfu)
    summary = {
        "parameters": count_parameters(cfg), "train_flops_per_token": model_flops,
        "train_flops_per_step": model_flops * tokens_per_step, "tokens_per_step": tokens_per_step,
        "tokens_per_second_per_gpu": peak_tflops * 1e12 * mfu / model_flops, "train_seconds": seconds,
        "train_days": seconds / 86400, "usable_gib": gpu_memory_gib - reserve_gib}
    rows = []
    for tp, pp, dp in valid:
        micro_batches = global_batch // (micro_batch * dp)
        sps = (False, True) if tp > 1 and seq_length % tp == 0 else (False,)
        for sp in sps:
            for recompute in RECOMPUTE:
                for dist_opt in ((False, True) if dp > 1 else (False,)):
                    par = ParallelConfig(tp, pp, sequence_parallel=sp, recompute_granularity=recompute,
                                         use_distributed_optimizer=dist_opt)
                    rows.append(_layout(cfg, par, dp, micro_batches, seq_length, micro_batch, precision, mask_prob,
                                        model_flops, mfu, summary["usable_gib"]))
    rows.sort(key=lambda r: (not r["fits"], r["hfu_needed"], r["tp"], r["pp"], r["memory_gib"]["total"]))
    inputs = {"gpus": gpus, "gpu_memory_gib": gpu_memory_gib, "peak_tflops": peak_tflops, "mfu": mfu,
              "train_iters": train_iters, "global_batch_size": global_batch, "seq_length": seq_length,
              "micro_batch_size": micro_batch, "precision": precision, "gpus_per_node": gpus_per_node,
              "mask_prob": mask_prob, "reserve_gib": reserve_gib}
    return {"inputs": inputs, "summary": summary, "layouts": rows}


def _layout(cfg, par, dp, micro_batches, seq_length, micro_batch, precision, mask_prob, model_flops, mfu, usable):
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    memory = memory_per_rank(cfg, par, seq_length, micro_batch, dp, precision, micro_batches=micro_batches,
                             predicted_fraction=mask_prob)
    gib = {k: v / GIB for k, v in memory.items()}
    gib["total"] = sum(gib.values())
    hardware = model_flops + recompute_flops_per_token(cfg, seq_length, par.recompute, micro_batch)
    bubble = (pp - 1) / micro_batches  # 1F1B idle time over compute time (Narayanan et al. 2021)
    return {"tp": tp, "pp": pp, "dp": dp, "sequence_parallel": par.sequence_parallel, "recompute": par.recompute,
            "distributed_optimizer": par.use_distributed_optimizer, "micro_batches": micro_batches,
            "memory_gib": gib, "fits": gib["total"] <= usable, "hardware_flops_per_token": hardware,
            "bubble": bubble, "hfu_needed": mfu * hardware / model_flops * (1 + bubble)}


def format_plan(result: dict, model_name: str, top: int = 20) -> str:
    """The summary lines and the first ``top`` layouts (0: all) as a table."""
    a = result["inputs"]
    s, rows = result["summary"], result["layouts"]
    fit = sum(r["fits"] for r in rows)
    lines = [
        f"{model_name}: {s['parameters'] / 1e9:.2f}B parameters; {a['gpus']} GPUs x {a['gpu_memory_gib']:g} GiB, "
        f"peak {a['peak_tflops']:g} TFLOP/s ({a['precision']}); seq {a['seq_length']}, global batch "
        f"{a['global_batch_size']}, micro-batch {a['micro_batch_size']}",
        f"model FLOPs: {s['train_flops_per_token'] / 1e9:.2f} GFLOP per token (training, MLM head at the predicted "
        f"positions only), {s['train_flops_per_step'] / 1e15:.2f} PFLOP per step of {s['tokens_per_step']:,} tokens",
        f"time for {a['train_iters']:,} steps at MFU {a['mfu']:g}: {s['train_days']:.1f} days "
        f"({s['tokens_per_second_per_gpu']:,.0f} tokens/s per GPU; the same for every layout, since MFU counts "
        f"model FLOPs: layouts differ in the HFU they need to get there)",
        f"{len(rows)} valid layouts, {fit} fit in {s['usable_gib']:g} GiB (GPU memory minus the reserve); "
        f"memory per rank in GiB (estimate, busiest rank):",
        "",
    ]
    header = ("  #  TP PP   DP  SP  recompute  dist-opt  m/step  weights  grads  optim  activ   total  fits  "
              "bubble  hw GFLOP/tok  HFU needed")
    lines.append(header)
    for i, r in enumerate(rows[:top] if top else rows, 1):
        m = r["memory_gib"]
        lines.append(
            f"{i:>3}  {r['tp']:>2} {r['pp']:>2} {r['dp']:>4}  {'on ' if r['sequence_parallel'] else 'off'} "
            f" {r['recompute'] or 'none':<9}  {'on ' if r['distributed_optimizer'] else 'off'}"
            f"     {r['micro_batches']:>6} "
            f" {m['weights']:>7.2f} {m['gradients']:>6.2f} {m['optimizer']:>6.2f} {m['activations']:>6.2f} "
            f"{m['total']:>7.2f}  {'yes' if r['fits'] else 'NO ':<4}  {100 * r['bubble']:>5.1f}%  "
            f"{r['hardware_flops_per_token'] / 1e9:>12.2f}  {100 * r['hfu_needed']:>9.1f}%")
    if top and len(rows) > top:
        lines.append(f"  ... {len(rows) - top} more (--top 0 for all, --json for every field)")
    return "\n".join(lines)

