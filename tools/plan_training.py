#!/usr/bin/env python
"""Plan a pretraining run: every valid layout of a model on N GPUs, its memory per rank, FLOPs and training time.

    python tools/plan_training.py --model-preset vega-6b --gpus 320 --gpu a100-80gb --mfu 0.4 \\
        --train-iters 1000000 --global-batch-size 2560 --seq-length 512 --micro-batch-size 4

Layouts: TP divides the attention heads, FFN and padded vocabulary and the GPUs per node (TP stays inside a
node); PP divides the layers; DP = GPUs / (TP x PP); the global batch divides by micro-batch x DP. Each is tried
with sequence parallelism off/on (TP > 1), recompute none/selective/full and the distributed optimizer off/on
(DP > 1). Rows are sorted best first: those that fit, then by the hardware FLOPs utilization (HFU) a layout
needs to deliver the stated MFU (MFU x hardware/model FLOPs x (1 + pipeline bubble)), then smaller TP and PP
(less communication), then less memory. `pretrain_vega.py --dry-run` checks one chosen layout.

Time: steps x global batch x seq x model FLOPs per token / (GPUs x peak x MFU). Model FLOPs per token are
flops.train_flops_per_token: 3 x the forward's matrix products (2 x MACs), the MLM head only at the predicted
(--mask-prob) positions; recomputation is hardware FLOPs, so it changes the HFU needed, not the time at a stated
MFU. Pipeline bubble of 1F1B: (PP - 1) / micro-batches.

Memory model (flops.memory_per_rank, an estimate for the busiest rank, the first pipeline stage):
  weights     parameters of the rank (its layers, the embeddings and nGiE conv, the MLM head when PP = 1) x 2 bytes
              (bf16/fp16) or 4 (fp32); split by TP but for the LayerNorms, the relative table and the conv,
              which are replicated
  gradients   4 bytes per parameter: megatron-core's fp32 gradient buffer, whole even with the distributed optimizer
  optimizer   Adam's two fp32 moments (8 bytes) plus fp32 main weights in 16-bit training (4), divided by DP with
              the distributed optimizer (ZeRO-1)
  activations per layer and micro-batch after Korthikanti et al. 2022 in 16 bits: 10sbh kept whole unless
              sequence parallel (LayerNorm inputs, the QKV/FFN-in inputs, dropout masks), 8sbp + 4sbf split by TP
              (Q, K, V, attention context, GELU input/output); of the attention core, with PyTorch's fused SDPA, only
              the additive c2p + p2c + mask bias [b, a, s, s] (2as²b/TP) and a fp32 log-sum-exp per row; the
              relative table per layer. Selective recompute drops the attention-core terms, full keeps 2sbh per
              layer (plus one layer rebuilt in the backward). Embeddings and conv ~ 14sbh. 1F1B keeps
              min(PP, micro-batches) micro-batches on the first stage. The MLM head (PP = 1) is computed at the
              predicted positions only: its fp32 logits and softmax are 8 bytes x predicted x vocab / TP.
  not counted the CUDA context, NCCL buffers and allocator fragmentation: --reserve-gib is kept free for them.
"""
import argparse
import json

from megatron_vega.config import PRESETS, model_preset
from megatron_vega.errors import VegaInputError, exit_on_input_error
from megatron_vega.training.planner import GPUS, format_plan, plan


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-preset", default="vega-6b", choices=list(PRESETS), help="(default: vega-6b)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="TP stays inside a node (default: 8)")
    parser.add_argument("--gpu", choices=list(GPUS),
                        help="fills --gpu-memory-gib and --peak-tflops (dense bf16; half of it, TF32, with fp32): "
                             + ", ".join(f"{k} {m:g} GiB {p:g} TFLOP/s" for k, (m, p) in GPUS.items()))
    parser.add_argument("--gpu-memory-gib", type=float, help="memory per GPU (GiB; overrides --gpu)")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per GPU in --precision (overrides --gpu)")
    parser.add_argument("--reserve-gib", type=float, default=4.0,
                        help="memory kept free for the CUDA context, NCCL and fragmentation (default: 4)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization assumed (default: 0.4)")
    parser.add_argument("--train-iters", type=int, default=1_000_000, help="optimizer steps (default: 1000000)")
    parser.add_argument("--global-batch-size", type=int, default=2048, help="samples per step (default: 2048)")
    parser.add_argument("--seq-length", type=int, default=512, help="tokens per sample (default: 512)")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="samples per micro-batch (default: 4)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16", help="(default: bf16)")
    parser.add_argument("--mask-prob", type=float, default=0.15,
                        help="share of positions predicted; the MLM head runs only there (default: 0.15)")
    parser.add_argument("--top", type=int, default=20, help="table rows (0: all; default: 20)")
    parser.add_argument("--json", action="store_true", help="print the inputs, summary and every layout as JSON")
    return parser.parse_args(argv)


def gpu_figures(args) -> tuple[float | None, float | None]:
    memory, peak = args.gpu_memory_gib, args.peak_tflops
    if args.gpu:
        gpu_memory, gpu_peak = GPUS[args.gpu]
        memory = gpu_memory if memory is None else memory
        peak = (gpu_peak / 2 if args.precision == "fp32" else gpu_peak) if peak is None else peak
    if memory is None:
        raise VegaInputError("--gpu-memory-gib", "give it or --gpu")
    if peak is None:
        raise VegaInputError("--peak-tflops", "give it or --gpu")
    return memory, peak


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_input_error():
        memory, peak = gpu_figures(args)
        cfg = model_preset(args.model_preset)
        result = plan(cfg, args.gpus, memory, peak, args.mfu, args.train_iters, args.global_batch_size,
                      args.seq_length, args.micro_batch_size, args.precision, args.gpus_per_node, args.mask_prob,
                      args.reserve_gib)
    if args.json:
        result["inputs"].update(model_preset=args.model_preset, gpu=args.gpu)
        print(json.dumps(result, indent=1))
    else:
        print(format_plan(result, args.model_preset, args.top))


if __name__ == "__main__":
    main()
