"""Which global sample indices a data-parallel rank reads, Megatron style, and batching of numpy samples.

Global batch g holds samples ``consumed + [0, global_batch_size)`` where ``consumed`` counts samples of all
earlier batches. It is cut into micro-batches of ``micro_batch_size * dp_size`` consecutive indices, and rank r
takes the r-th ``micro_batch_size`` slice of each (Megatron's MegatronPretrainingSampler layout). Since a
sample depends only on its index, every global batch holds the same samples whatever the DP size, and resuming
at ``consumed_samples`` gives the very samples an uninterrupted run would have read next.
"""
from collections.abc import Iterator

import numpy as np

from megatron_vega.errors import VegaInputError


def global_batch_indices(consumed_samples: int, global_batch_size: int) -> np.ndarray:
    """The global sample indices of the batch that starts after ``consumed_samples`` samples."""
    return np.arange(consumed_samples, consumed_samples + global_batch_size, dtype=np.int64)


def rank_microbatch_indices(consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                            dp_rank: int, dp_size: int) -> np.ndarray:
    """[num_micro_batches, micro_batch_size] indices this rank reads from the global batch at ``consumed_samples``."""
    check_batch_sizes(global_batch_size, micro_batch_size, dp_size)
    batch = global_batch_indices(consumed_samples, global_batch_size)
    return batch.reshape(-1, dp_size, micro_batch_size)[:, dp_rank, :]


def check_batch_sizes(global_batch_size: int, micro_batch_size: int, dp_size: int) -> None:
    if micro_batch_size < 1 or dp_size < 1 or global_batch_size % (micro_batch_size * dp_size):
        raise VegaInputError("--global-batch-size", f"{global_batch_size} is not a multiple of --micro-batch-size "
                                                   f"({micro_batch_size}) times the data-parallel size ({dp_size})")


def check_interleaved_microbatches(global_batch_size: int, micro_batch_size: int, dp_size: int, pp: int) -> None:
    """The interleaved 1F1B schedule runs micro-batches in groups of PP per virtual stage: their number per step
    must be a multiple of PP (megatron-core otherwise stops with a traceback in the first step)."""
    m = global_batch_size // (micro_batch_size * dp_size)
    if m % pp:
        raise VegaInputError("--global-batch-size", f"{global_batch_size} gives {m} micro-batches per step on each "
                                                   f"data-parallel rank; --num-layers-per-virtual-pipeline-stage "
                                                   f"needs a multiple of the pipeline size {pp}")


class MicroBatchSampler:
    """Yields this rank's micro-batches (lists of sample indices) from ``consumed_samples`` on, global batch after
    global batch, until ``total_samples`` (None: forever). Usable as a torch DataLoader ``batch_sampler``."""

    def __init__(self, consumed_samples: int, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, total_samples: int | None = None):
        check_batch_sizes(global_batch_size, micro_batch_size, dp_size)
        self.consumed_samples = consumed_samples
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.total_samples = total_samples

    def __iter__(self) -> Iterator[list[int]]:
        consumed = self.consumed_samples
        while self.total_samples is None or consumed + self.global_batch_size <= self.total_samples:
            for micro in rank_microbatch_indices(consumed, self.global_batch_size, self.micro_batch_size,
                                                 self.dp_rank, self.dp_size):
                yield micro.tolist()
            consumed += self.global_batch_size


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack samples key by key: [micro_batch, seq_length] arrays and a [micro_batch] ``block_id``."""
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
