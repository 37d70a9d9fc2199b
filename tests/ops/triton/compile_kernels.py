"""Compile every Triton kernel with the real compiler for an H100 (sm_90: TTIR -> PTX -> cubin through the wheel's
ptxas), on a machine without a GPU. The interpreter runs Python semantics and lets through what the compiler
refuses (non-constexpr globals, loop-carried type changes, ...); this does not. One variant per kernel: bf16,
d = 64, every option on. Run as a script in a process WITHOUT TRITON_INTERPRET (test_kernels_compile.py does)."""
import inspect
import os

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

FLOATS = {"scale", "p_drop", "alpha", "inv_vocab", "eps"}


def compile_for_h100(kernel, pointers: dict, constexprs: dict) -> dict:
    """pointers: argument name -> element type ("bf16", "fp32", "i32"); other arguments are i32 or fp32 scalars."""
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: "constexpr" if n in constexprs else "*" + pointers[n] if n in pointers else
                 "fp32" if n in FLOATS else "i32" for n in names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm


def main():
    assert os.environ.get("TRITON_INTERPRET", "0") == "0", "run without the interpreter"
    from megatron_vega.ops.triton import attention_kernels, layer_kernels, soft_target_kernels
    f32, bf = "fp32", "bf16"
    tables = dict(C2P=f32, P2C=f32, IDX="i32", MASK=f32, ROW_MAX=f32, ROW_SUM=f32, DELTA=f32)
    qkv = dict(Q=bf, K=bf, V=bf, DO=bf, OUT=bf)
    on = dict(HAS_C2P=True, HAS_P2C=True, HAS_MASK=True, HAS_DROPOUT=True, IEEE=False, BLOCK_M=64, BLOCK_N=64,
              BLOCK_D=64)
    kernels = [
        (attention_kernels.attention_forward, {**qkv, **tables}, on),
        (attention_kernels.attention_backward_kv, {**qkv, **tables, "DK": f32, "DV": f32, "DP2C": f32}, on),
        (attention_kernels.attention_backward_q, {**qkv, **tables, "DQ": f32, "DC2P": f32}, on),
        (soft_target_kernels._stats_kernel, dict(Z=f32, Y=f32, T="i32", OUT=f32), dict(HAS_Y=True, BLOCK=1024)),
        (soft_target_kernels._grad_kernel, dict(Z=f32, Y=f32, T="i32", M_Z=f32, S_Z=f32, M_Y=f32, S_Y=f32, G=f32),
         dict(HAS_Y=True, BLOCK=1024)),
        (layer_kernels.bias_gelu_forward, dict(X=bf, B=bf, Y=bf), dict(BLOCK=1024)),
        (layer_kernels.bias_gelu_backward, dict(X=bf, B=bf, DY=bf, DX=bf), dict(BLOCK=1024)),
        (layer_kernels.dropout_add_layer_norm_forward,
         dict(X=bf, RES=bf, W=bf, B=bf, Y=bf, H=bf, MEAN=f32, RSTD=f32), dict(HAS_DROPOUT=True, BLOCK=1024)),
        (layer_kernels.dropout_add_layer_norm_backward,
         dict(H=bf, W=bf, DY=bf, MEAN=f32, RSTD=f32, DRES=bf, DX=bf, DW_PART=f32, DB_PART=f32),
         dict(ROWS_PER_PROGRAM=16, HAS_DROPOUT=True, BLOCK=1024)),
    ]
    for kernel, pointers, constexprs in kernels:
        asm = compile_for_h100(kernel, pointers, constexprs)
        assert asm.get("cubin"), kernel.fn.__name__
        print("compiled", kernel.fn.__name__, flush=True)


if __name__ == "__main__":
    main()
