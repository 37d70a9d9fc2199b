"""Attention cores: softmax(scale * QK^T + c2p + p2c + mask) V given the projections (docs/attention.md).

The model computes the projections and the scale; a core computes the rest. Every core is called as
``core(qkv, prefix_key, prefix_value, pos_key, pos_query, rel_index, mask_bias, dropout_p, scale)`` with
qkv [3, b, h, s, d], deep-prompt prefix keys/values [b, h, P, d] or None, the position tables [h, 2k, d] already
multiplied by ``scale`` (or None when the term is off), ``rel_index`` [s, s] or [b, s, s], ``mask_bias`` additive
[b, 1, s, P + s] or None, and returns the context [b, h, s, d]. Each states what it supports (``support``, a
CoreSupport) and whether it is the fast choice for a device and dtype (``preferred``).

The core is chosen once, when the model is built (``--attention-backend``): ``auto`` takes the first core in
CORES, fastest first, that runs the device and dtype and prefers them.
"""
import torch

from megatron_vega.errors import VegaInputError
from megatron_vega.ops.attention.cpu import CpuCore
from megatron_vega.ops.attention.sdpa import SdpaCore
from megatron_vega.ops.attention.triton import TritonCore

CORES = {core.name: core for core in (TritonCore(), CpuCore(), SdpaCore())}  # fastest first, for ``auto``
BACKENDS = ("auto", *CORES)

_chosen: dict[str, None] = {}  # the cores this process has built models with, in order (for kernels.describe)


def select_core(backend: str, device, dtype: torch.dtype, record: bool = True):
    """The core for ``--attention-backend`` on this device and parameter dtype; VegaInputError if it cannot run.
    ``record``: a model is built with it (reported by chosen_cores)."""
    device = torch.device(device)
    if backend == "auto":
        core = next(c for c in CORES.values() if c.support.runs(device, dtype) and c.preferred(device, dtype))
    elif backend not in CORES:
        raise VegaInputError("--attention-backend", f"unknown core {backend!r}; choose from {', '.join(BACKENDS)}")
    else:
        core = CORES[backend]
        if not core.support.runs(device, dtype):
            able = [name for name, c in CORES.items() if c.support.runs(device, dtype)]
            raise VegaInputError("--attention-backend", f"{backend} does not run on {device.type} in "
                                                        f"{str(dtype).removeprefix('torch.')}; choose from auto, "
                                                        f"{', '.join(able)}")
    if record:
        _chosen[core.name] = None
    return core


def chosen_cores() -> list[str]:
    """Names of the cores models of this process were built with."""
    return list(_chosen)
