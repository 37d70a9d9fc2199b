"""megatron_vega: Megatron-style training of DeBERTa-v2-style encoders (Vega v2)."""
import warnings

__version__ = "0.1.0"

# megatron-core warns at import time that optional GPU accelerators are absent; on CPU that is expected.
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS.*")
warnings.filterwarnings("ignore", message=".*full scope is deprecated.*")
# Said once per rank by megatron-core's norm backends; which kernels run is logged once on one rank instead
# (ops.kernels.describe).
warnings.filterwarnings("ignore", message=".*Apex is not installed. Falling back to Torch Norm.*")
# megatron-core 0.16's torch_dist load strategy calls torch.distributed.checkpoint's deprecated load_state_dict
# on every rank and load; the call is inside megatron-core, nothing to change on our side.
warnings.filterwarnings("ignore", message=".*`load_state_dict` is deprecated.*", category=FutureWarning)
