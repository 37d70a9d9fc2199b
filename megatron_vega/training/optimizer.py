"""The optimizer: megatron-core's (mixed precision, distributed optimizer, gradient clipping, loss scaling) over
torch's fused AdamW kernel when megatron-core falls back to torch's Adam."""
import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer


def build_optimizer(config: OptimizerConfig, model_chunks: list):
    optimizer = get_megatron_optimizer(config, model_chunks)
    use_fused_torch_adam(optimizer)
    return optimizer


def torch_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron-core optimizer (a ChainedOptimizer holds several)."""
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [o.optimizer for o in chained if getattr(o, "optimizer", None) is not None]


def use_fused_torch_adam(optimizer) -> None:
    """Without TE or apex megatron-core builds torch.optim.Adam(W) with torch's default implementation, which on
    CPU is the per-tensor loop (foreach is CUDA-only by default, and on CPU slower still). torch's fused kernel
    (CPU and CUDA) makes one pass per tensor: 2.7x faster than the loop here (benchmarks/BENCHMARKS.md).
    TE's and apex's FusedAdam are left as they are."""
    for opt in torch_optimizers(optimizer):
        if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
            for group in opt.param_groups:
                group["fused"], group["foreach"] = True, False
