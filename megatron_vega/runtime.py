"""Where the code runs: device, process groups, and megatron-core's CPU shims. The only module that knows.

On a GPU machine this picks NCCL and CUDA and changes nothing in torch or megatron-core. Without CUDA it picks
gloo and installs the minimal shims megatron-core 0.16 needs on CPU (see docs/megatron_core_cpu.md):
``torch.cuda`` RNG/device/sync/stream calls answered by the CPU, ``device="cuda"`` in tensor factories mapped to
the CPU, and ``Tensor.type()`` answering with the ``torch.cuda.*`` names megatron-core compares against.
On a CPU without bf16 matrix units it also computes the matrix products of bf16/fp16 tensors in fp32 (in_fp32).
"""
import atexit
import datetime
import functools
import logging
import os
import tempfile
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available()
_SHIMS_INSTALLED = False


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if ON_GPU else torch.device("cpu")


def backend() -> str:
    return "nccl" if ON_GPU else "gloo"


def _cpu_if_cuda(dev):
    if isinstance(dev, int) or (isinstance(dev, str) and dev.startswith("cuda")) or (
            isinstance(dev, torch.device) and dev.type == "cuda"):
        return torch.device("cpu")
    return dev


def _factory(fn):
    def wrapped(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        return fn(*args, **kwargs)
    wrapped.__wrapped__ = fn
    return wrapped


class _NoStream:
    """Stands in for torch.cuda streams: every call is a no-op, usable as a context manager."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def install_cpu_shims() -> None:
    """Make megatron-core's CUDA-only calls work on the CPU. Idempotent; does nothing when CUDA is present."""
    global _SHIMS_INSTALLED
    if ON_GPU or _SHIMS_INSTALLED:
        return
    _SHIMS_INSTALLED = True
    cuda = torch.cuda
    cuda.current_device = lambda: "cpu"
    cuda.synchronize = lambda *a, **k: None
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # Not torch.manual_seed: it calls torch.cuda.manual_seed_all itself (left as is: a lazy no-op on CPU).
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    cuda.current_stream = lambda *a, **k: _NoStream()
    cuda.default_stream = lambda *a, **k: _NoStream()
    cuda.Stream = _NoStream
    cuda.stream = lambda *a, **k: nullcontext()
    cuda.empty_cache = lambda: None
    cuda.random.get_rng_state = cuda.get_rng_state
    for name in ("tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "zeros_like",
                 "empty_like", "ones_like"):
        setattr(torch, name, _factory(getattr(torch, name)))

    original_to, original_type = torch.Tensor.to, torch.Tensor.type

    def to(self, *args, **kwargs):
        args = tuple(_cpu_if_cuda(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        return original_to(self, *args, **kwargs)

    def tensor_type(self, *args, **kwargs):
        if args or kwargs:
            return original_type(self, *args, **kwargs)
        return original_type(self).replace("torch.", "torch.cuda.", 1)

    torch.Tensor.to = to
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.type = tensor_type

    from megatron.core.tensor_parallel import random as mcore_random
    # fork() checks the CPU generator is untouched; here the forked "CUDA" generator *is* the CPU one.
    logging.getLogger(mcore_random.__name__).addFilter(lambda r: "CPU RNG state changed" not in r.getMessage())
    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    if not all(low_precision_gemm_native(dtype) for dtype in _LOW):
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
        for cls in (ColumnParallelLinear, RowParallelLinear):
            cls._forward_impl = _linear_in_fp32(cls._forward_impl)


@functools.cache
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), ()))
    except OSError:
        return frozenset()


def low_precision_gemm_native(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether matrix products in ``dtype`` (bf16 or fp16) run on matrix hardware here: any GPU; on CPU
    AVX512-BF16/AMX-BF16 for bf16, AVX512-FP16/AMX-FP16 for fp16. Elsewhere PyTorch emulates them, far slower
    than fp32 (BENCHMARKS.md). Unknown CPUs (no /proc/cpuinfo) count as native."""
    flags = _cpu_flags()
    units = {"avx512_fp16", "amx_fp16"} if dtype == torch.float16 else {"avx512_bf16", "amx_bf16"}
    return ON_GPU or not flags or bool(flags & units)


_LOW = (torch.bfloat16, torch.float16)


def in_fp32(fn, *args, **kwargs):
    """fn(*args, **kwargs) with its bf16/fp16 tensor arguments upcast to fp32 and the result cast back, where
    low-precision GEMMs are emulated (low_precision_gemm_native); otherwise just fn(*args, **kwargs). The inputs
    are exact in fp32 and a bf16 GEMM accumulates in fp32 and rounds its output to bf16 anyway, so this is what a
    bf16 matrix unit computes, at the fp32 GEMM's speed. What autograd saves of the upcast arguments is kept as
    the original tensors (no fp32 copies held until the backward); the backward multiplies in fp32 too."""
    upcast = []

    def up(x):
        if isinstance(x, torch.Tensor) and x.dtype in _LOW and not low_precision_gemm_native(x.dtype):
            upcast.append((x.float(), x))
            return upcast[-1][0]
        return x
    args, kwargs = [up(a) for a in args], {k: up(v) for k, v in kwargs.items()}
    if not upcast:
        return fn(*args, **kwargs)

    def pack(t):  # (tensor to keep, version of the original it came from, to refuse in-place changes as autograd)
        for wide, low in upcast:
            if t is wide:
                return low, low._version
            if t._base is wide and wide.stride() == low.stride():  # e.g. weight.t() saved by linear
                return low.as_strided(t.size(), t.stride(), low.storage_offset() + t.storage_offset()
                                      - wide.storage_offset()), low._version
        return t, None

    def unpack(saved):
        t, version = saved
        if version is None:
            return t
        if t._version != version:
            raise RuntimeError("a bf16 tensor saved for the backward by runtime.in_fp32 was modified in place")
        return t.float()
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = fn(*args, **kwargs)
    return out.to(upcast[0][1].dtype)


class _RowBlockLinear(torch.autograd.Function):
    """x @ weight.T for a low-precision ``weight`` with many rows (the vocabulary), in fp32 one block of rows at a
    time: in_fp32 would hold a whole fp32 copy of the weight in the forward and, in the backward, another one and
    an fp32 weight gradient (3 x 0.5 GB for a 128k x 1024 table)."""
    BLOCK_BYTES = 32 << 20  # fp32 bytes of weight per block: under glibc's mmap threshold, so blocks are recycled

    @staticmethod
    def forward(ctx, x, weight):
        x32, rows = x.float(), _RowBlockLinear._rows(weight)
        out = x.new_empty(*x.shape[:-1], weight.shape[0])
        for r in range(0, weight.shape[0], rows):
            out[..., r:r + rows] = x32 @ weight[r:r + rows].float().t()
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rows, x32 = _RowBlockLinear._rows(weight), x.float().reshape(-1, x.shape[-1])
        grad = grad.reshape(-1, grad.shape[-1])
        gx = torch.zeros_like(x32) if ctx.needs_input_grad[0] else None
        gw = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        for r in range(0, weight.shape[0], rows):
            g = grad[:, r:r + rows].float()
            if gx is not None:
                gx.addmm_(g, weight[r:r + rows].float())
            if gw is not None:
                gw[r:r + rows] = g.t() @ x32
        return None if gx is None else gx.view(x.shape).to(x.dtype), gw

    @staticmethod
    def _rows(weight) -> int:
        return max(1, _RowBlockLinear.BLOCK_BYTES // (4 * weight.shape[1]))


def linear_in_fp32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) for a large weight (the tied vocabulary table), computed as in_fp32 does but without
    an fp32 copy of the whole weight: by row blocks where low-precision GEMMs are emulated, else F.linear."""
    if weight.dtype not in _LOW or low_precision_gemm_native(weight.dtype):
        return F.linear(x, weight)
    return _RowBlockLinear.apply(x, weight)


def _linear_in_fp32(forward_impl):
    """megatron-core's parallel linears call torch.matmul (the slowest emulated bf16 path) inside an autograd
    Function: run the whole Function, collectives included, on fp32 views of its inputs."""
    def wrapped(self, *args, **kwargs):
        return in_fp32(forward_impl, self, *args, **kwargs)
    return wrapped


def parallel_linear_kwargs() -> dict:
    """ModelParallelConfig fields that depend on the machine (CPU: no fused CUDA kernels, no batched p2p)."""
    return dict(
        use_cpu_initialization=not ON_GPU,
        gradient_accumulation_fusion=False,
        # Batched p2p gives silently wrong results with interleaved PP=2 on gloo (megatron-core bug).
        batch_p2p_comm=ON_GPU,
    )


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun/Slurm describe (RANK, WORLD_SIZE, MASTER_ADDR/PORT), or a world of one.
    VEGA_INIT_METHOD (e.g. file:///shared/rendezvous) replaces the TCP rendezvous (tests use it: no port races).

    Returns (rank, world_size).
    """
    install_cpu_shims()
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    init_method = os.environ.get("VEGA_INIT_METHOD", "env://")
    if world == 1 and "MASTER_ADDR" not in os.environ and init_method == "env://":
        # A world of one needs no port (a free port can be taken by another process before we bind it).
        init_method = "file://" + os.path.join(tempfile.mkdtemp(prefix="vega-rendezvous-"), "store")
    if ON_GPU:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend(), init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=30))
    # Left to interpreter teardown, gloo's threads can die with "terminate called without an active exception"
    # and a non-zero exit after a run that finished; every entry point joins here, so it leaves here too.
    atexit.register(_leave_process_group)
    return rank, world


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_model_parallel(tp: int, pp: int, vp: int | None = None, seed: int = 1234) -> None:
    """megatron-core's parallel state plus its model-parallel RNG tracker (dropout agrees within TP groups)."""
    from megatron.core import parallel_state, tensor_parallel
    install_cpu_shims()
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vp)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def peak_memory_bytes() -> int:
    """Peak memory of this process: the CUDA allocator's peak on GPU, the resident-set high-water mark on CPU."""
    if ON_GPU:
        return torch.cuda.max_memory_allocated()
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Dense bf16 datasheet peaks (TFLOP/s) of common training GPUs, for MFU when --peak-tflops is not given.
_GPU_PEAK_BF16 = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "B200": 2250.0, "L40S": 362.0, "A10": 125.0}


def gemm_peak_tflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float | None:
    """Peak matrix-multiply throughput of one rank: the datasheet figure on a known GPU, measured on CPU
    (best of a few size^3 products in this dtype the way the model computes them, see in_fp32, split over this
    process's threads)."""
    import time
    if ON_GPU:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in _GPU_PEAK_BF16.items() if k in name), None)
        return None if peak is None else peak * (0.5 if dtype == torch.float32 else 1.0)
    # A generator of its own: drawing from the default one would shift dropout after a resume (this runs after
    # the checkpoint's RNG states are restored).
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        in_fp32(torch.mm, a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e12
