"""Optional fused kernels: apex / transformer-engine LayerNorm on a GPU when importable, torch otherwise; and the
one-line description of every kernel choice (the attention core is chosen in ops/attention)."""
import torch

from megatron_vega.runtime import ON_GPU


def _fused_layernorm_cls():
    if not ON_GPU:
        return None
    try:
        from apex.normalization import FusedLayerNorm  # NVIDIA apex, built from source by the user
        return FusedLayerNorm
    except ImportError:
        pass
    try:
        import transformer_engine.pytorch as te
        return te.LayerNorm
    except ImportError:
        return None


def layer_norm(hidden: int, eps: float, sequence_parallel: bool = False) -> torch.nn.Module:
    """A LayerNorm whose params are tagged for megatron-core: with sequence parallelism each TP rank sees a
    different sequence chunk, so their grads are all-reduced across TP by finalize_model_grads."""
    cls = _fused_layernorm_cls() or torch.nn.LayerNorm
    norm = cls(hidden, eps=eps)
    for p in norm.parameters():
        p.sequence_parallel = sequence_parallel
    return norm


def describe() -> str:
    """One line naming the kernels this process uses, for the training log: the attention core(s) its models were
    built with (before any, what ``auto`` would pick for fp32 here)."""
    from megatron_vega import runtime
    from megatron_vega.ops.attention import chosen_cores, select_core
    norm = _fused_layernorm_cls()
    norm_name = "torch" if norm is None else f"{norm.__module__.split('.')[0]} {norm.__name__}"
    auto = select_core("auto", runtime.device(), torch.float32, record=False)
    cores = chosen_cores() or [f"{auto.name} (auto, fp32)"]
    attention = " + ".join(f"core {name}" for name in cores)
    gemm = "; ".join(f"{name} GEMMs " + ("native" if runtime.low_precision_gemm_native(dtype) else
                                         "in fp32 (no matrix units for it)")
                     for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)))
    from megatron_vega.ops import fused_layer
    if runtime.ON_GPU and fused_layer.TRITON_AVAILABLE:  # VegaLayer's fused pieces (ops/fused_layer.py)
        norm_name += " (residual + dropout + LayerNorm and bias + GELU fused in Triton)"
    return f"kernels: LayerNorm {norm_name}; attention {attention}; AdamW torch fused; {gemm}"
