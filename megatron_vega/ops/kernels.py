"""Optional fused kernels: apex / transformer-engine LayerNorm on a GPU when importable, torch otherwise."""
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
    """One line naming the kernels this process uses, for the training log."""
    from megatron_vega import runtime
    norm = _fused_layernorm_cls()
    norm_name = "torch" if norm is None else f"{norm.__module__.split('.')[0]} {norm.__name__}"
    attention = "SDPA" if ON_GPU else "hand-written CPU core"
    gemm = "; ".join(f"{name} GEMMs " + ("native" if runtime.low_precision_gemm_native(dtype) else
                                         "in fp32 (no matrix units for it)")
                     for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)))
    return f"kernels: LayerNorm {norm_name}; attention {attention}; AdamW torch fused; {gemm}"
