"""Micro-batches for this rank: sample indices from the Megatron-style sampler, read by tensor-parallel rank 0
only and broadcast to the rest of its TP group (megatron-core's broadcast_data).

What a batch holds is the objective's (its ``host_batch``); the broadcast carries every tensor of it as int64,
whatever its keys (per-batch attention inputs such as position ids or masks travel the same way). ``host_batch``
below is the masked-LM batch. The predicted positions are computed on the host, before the tensors reach the
device, so the step never waits on a device-side nonzero(): the model computes the output layer only at those
positions.
"""
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from megatron_vega import runtime
from megatron_vega.data.sampler import collate, rank_microbatch_indices

KEYS = ("tokens", "labels", "padding_mask", "loss_mask", "lm_positions")


def host_batch(dataset, indices) -> dict[str, torch.Tensor]:
    """Read masked-LM samples and add ``lm_positions``: flat indices (sequence-major, matching the model's [s, b]
    layout) of the positions whose prediction is scored."""
    arrays = collate([dataset[int(i)] for i in indices])
    positions = np.flatnonzero(arrays["loss_mask"].T.reshape(-1) > 0)
    batch = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])).long() for k in KEYS[:4]}
    batch["lm_positions"] = torch.from_numpy(positions).long()
    batch["block_id"] = torch.from_numpy(arrays["block_id"]).long()
    return batch


def _batch_keys(batch: dict | None) -> list[str]:
    """TP rank 0's keys, on every rank of its TP group (the others cannot know which keys this batch has)."""
    keys = [sorted(batch)] if batch is not None else [None]
    group = parallel_state.get_tensor_model_parallel_group()
    dist.broadcast_object_list(keys, src=parallel_state.get_tensor_model_parallel_src_rank(), group=group)
    return keys[0]


def broadcast_batch(batch: dict | None) -> dict[str, torch.Tensor]:
    """TP rank 0 passes its batch, the others None; everyone returns the device tensors (int64)."""
    data = None if batch is None else {k: v.to(runtime.device(), torch.int64) for k, v in batch.items()}
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return data
    return tensor_parallel.broadcast_data(_batch_keys(batch), data, torch.int64)


def microbatches(dataset, consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                 make_batch: Callable = host_batch) -> Iterator[dict]:
    """This rank's micro-batches of the global batch starting at ``consumed_samples``; make_batch(dataset, indices)
    builds a micro-batch's host tensors (the objective's)."""
    dp_rank = parallel_state.get_data_parallel_rank()
    dp = parallel_state.get_data_parallel_world_size()
    reader = parallel_state.get_tensor_model_parallel_rank() == 0
    for indices in rank_microbatch_indices(consumed_samples, global_batch_size, micro_batch_size, dp_rank, dp):
        yield broadcast_batch(make_batch(dataset, indices) if reader else None)
