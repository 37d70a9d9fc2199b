"""Fine-tuning tests: real SuperGLUE files (skipped when absent), the botchan sentencepiece model, tiny runs."""
from pathlib import Path

import pytest
import torch.distributed as dist

from megatron_vega import runtime
from megatron_vega.finetune.config import FinetuneRun, OptimConfig, SiftConfig, TaskConfig, TransductiveConfig


@pytest.fixture
def superglue(shared_data) -> Path:
    return shared_data / "superglue"


@pytest.fixture
def spm_path(shared_data) -> str:
    return str(shared_data / "corpus" / "botchan_sp1k.model")


@pytest.fixture(scope="module")
def world_of_one():
    """One process group for a module of in-process runs (each run sets up its own model-parallel state)."""
    runtime.init_distributed()
    yield
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def tiny_run(task: str, tokenizer: str, sift: bool = False, rounds: int = 0, optim=None, **task_cfg) -> FinetuneRun:
    """A run of the random-init tiny model: seq 128, 2 epochs, high LR, quiet log."""
    optim = {"epochs": 2, "micro_batch_size": 8, "seq_length": 128, "lr": 2e-3, "log_interval": 1000, "seed": 3,
             **(optim or {})}
    return FinetuneRun(task=TaskConfig(task=task, tokenizer_model=tokenizer, **task_cfg),
                       optim=OptimConfig(**optim), sift=SiftConfig(sift=sift),
                       transductive=TransductiveConfig(transductive_rounds=rounds), model_preset="tiny")
