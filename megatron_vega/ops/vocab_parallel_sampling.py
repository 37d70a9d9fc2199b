"""Categorical sampling and argmax over tensor-parallel vocabulary shards, without gathering the vocabulary
(docs/coco_lm.md, "Sampling the replacements").

Each TP rank holds the logits of a contiguous slice [start, start + V/tp) of the padded vocabulary. Gumbel-max:
x = argmax_v (z_v + g_v) with g_v ~ Gumbel(0, 1) i.i.d. is an exact draw from softmax(z). Every rank adds noise
to its own slice, takes its local maximum, and two all-reduces (MAX of the values, then MAX of the ids that
reach it) give every rank the same global winner: [n] ints cross the TP group, never [n, V].

The noise g_v of a row is a pure function of (seed, the row's key, the global vocabulary id v): a counter-based
hash, not a stateful generator. So a row's draw does not depend on how the vocabulary is split (TP = 2 samples
exactly what TP = 1 samples), on which data-parallel rank holds the row, or on resuming; megatron-core's TP RNG
tracker would give each shard its own stream and make the samples depend on the TP size.
"""
import torch
import torch.distributed as dist
from megatron.core import parallel_state

_MASK32 = 0xFFFFFFFF
_ROWS_PER_CHUNK_ELEMENTS = 1 << 24  # bound the int64 hash temporaries to ~128 MiB per chunk


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64, without ever overflowing int64."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser with full avalanche (the 'lowbias32' constants) on int64 tensors."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seed: int, sample_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from (seed, the global sample index, the position in the sequence)."""
    key = mix32(torch.full_like(sample_ids, (seed * 0x9E3779B1) & _MASK32) ^ (sample_ids & _MASK32))
    key = mix32(key ^ (sample_ids >> 32))
    return mix32(key ^ mix32(positions + 0x632BE5AB))


def gumbel_noise(keys: torch.Tensor, vocab_start: int, vocab_count: int) -> torch.Tensor:
    """[n, vocab_count] fp32 Gumbel(0, 1) noise for the global ids [vocab_start, vocab_start + vocab_count) of the
    rows with these keys. Uniforms have 24 bits (exact in fp32, never 0 or 1): the draw is exact up to 2^-24."""
    ids = torch.arange(vocab_start, vocab_start + vocab_count, device=keys.device, dtype=torch.int64)
    h = mix32(mix32(keys[:, None] ^ mix32(ids ^ 0x5BD1E995)[None, :]) + 0x27D4EB2F)
    u = ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))


def _global_argmax(values: torch.Tensor, local_index: torch.Tensor, vocab_start: int) -> torch.Tensor:
    """The global id of the largest value over the TP group (ties: the larger id), identical on every rank."""
    ids = local_index + vocab_start
    group = parallel_state.get_tensor_model_parallel_group()
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return ids
    best = values.clone()
    dist.all_reduce(best, op=dist.ReduceOp.MAX, group=group)
    ids = torch.where(values == best, ids, torch.full_like(ids, -1))
    dist.all_reduce(ids, op=dist.ReduceOp.MAX, group=group)
    return ids


def shard_start(width: int) -> int:
    """The global id of this TP rank's first vocabulary entry, for shards of ``width`` = V/tp entries."""
    return parallel_state.get_tensor_model_parallel_rank() * width


@torch.no_grad()
def vocab_parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """[n, V/tp] shard -> [n] global argmax ids (the same on every TP rank)."""
    values, index = logits.float().max(dim=-1)
    return _global_argmax(values, index, shard_start(logits.shape[-1]))


@torch.no_grad()
def vocab_parallel_gumbel_sample(logits: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[n, V/tp] shard of fp32 logits, [n] row keys (``row_keys``) -> [n] global ids drawn from softmax(logits),
    the same on every TP rank. Padded vocabulary entries (logit -1e30) are never drawn."""
    n, width = logits.shape
    start = shard_start(width)
    rows = max(1, _ROWS_PER_CHUNK_ELEMENTS // max(width, 1))
    values, index = [], []
    for lo in range(0, n, rows):
        scores = logits[lo:lo + rows].float() + gumbel_noise(keys[lo:lo + rows], start, width)
        v, i = scores.max(dim=-1)
        values.append(v)
        index.append(i)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=logits.device)
    return _global_argmax(torch.cat(values), torch.cat(index), start)
