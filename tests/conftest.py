import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Triton reads TRITON_INTERPRET when a kernel is defined, so on a machine without a GPU it is set here, before any
# test module is imported: whichever test first imports a kernel module, it gets the interpreter
# (tests/ops/triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def shared_data_dir() -> Path:
    """Real data from ../shared/data (read-only), or $VEGA_SHARED_DATA; tests needing it skip when absent."""
    return Path(os.environ.get("VEGA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set VEGA_SHARED_DATA)")
    return path


@pytest.fixture
def single_process():
    """A world of one with TP=PP=1: megatron-core layers need an initialized parallel state."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_vega import runtime
    runtime.init_distributed()
    runtime.init_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
