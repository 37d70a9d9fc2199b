"""DeBERTa-v2 relative positions: log buckets and the index into the relative-embedding table (docs/attention.md)."""
import functools
import math

import torch


def log_bucket(relative: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """bucket(rel): exact for |rel| <= buckets/2, logarithmic beyond, in [-(buckets-1), buckets-1]."""
    mid = buckets // 2
    sign = torch.sign(relative)
    # Inside (-mid, mid) the log branch is unused; mid-1 keeps its log() finite.
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.full_like(relative, mid - 1), relative.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative.to(log_pos.dtype), log_pos * sign).long()


def index_of_relative(rel: torch.Tensor, buckets: int, max_position: int, span: int) -> torch.Tensor:
    """delta = clamp(bucket(rel) + span, 0, 2*span - 1) for relative positions rel = pos_i - pos_j, any shape."""
    if buckets > 0:
        rel = log_bucket(rel, buckets, max_position)
    return torch.clamp(rel + span, 0, 2 * span - 1)


@functools.lru_cache(maxsize=16)
def relative_index(seq_len: int, buckets: int, max_position: int, span: int, device: str = "cpu") -> torch.Tensor:
    """delta(i, j) for positions 0..s-1, [s, s]: the row of the relative table that query i uses for key j. The same
    index serves c2p (indexing position keys) and p2c (indexing position queries)."""
    pos = torch.arange(seq_len, device=device)
    return index_of_relative(pos[:, None] - pos[None, :], buckets, max_position, span)


def relative_index_per_sample(position_ids: torch.Tensor, buckets: int, max_position: int, span: int) -> torch.Tensor:
    """delta(i, j) from each sequence's own positions: position_ids [b, s] (int64) -> [b, s, s]."""
    return index_of_relative(position_ids[:, :, None] - position_ids[:, None, :], buckets, max_position, span)
