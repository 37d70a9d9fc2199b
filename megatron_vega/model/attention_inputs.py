"""What every attention layer of one batch reads besides the hidden states: built once per batch, expanded once per
forward into the tensors the layers take (docs/attention.md, "Masks" and "Positions").

Every field but ``prefix`` is a batch tensor: on a tensor-parallel group only rank 0 reads data, and the batch
broadcast sends each key present (as int64; ``from_batch`` turns a dense mask back into bool on the device).
"""
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from megatron_vega.model.relative_position import relative_index, relative_index_per_sample


@dataclass
class AttentionInputs:
    """``padding_mask`` [b, s]: 1 for a real token, 0 for padding. As in HF DeBERTa the mask is pairwise: a query and
    a key must both be real (a padded query sees no token).

    Optional further restrictions, all combined with AND (each True/1 = may attend):
    ``prefix_lengths`` [b]: GLM's prefix + causal mask: query i sees key j iff j < L or j <= i (the first L tokens
    attend bidirectionally among themselves, the rest see the prefix and causally themselves);
    ``block_ids`` [b, s]: option isolation (UniMC): query i sees key j iff block_ids[j] == 0 (the shared context)
    or block_ids[i] == block_ids[j]; with ``context_sees_blocks`` also when block_ids[i] == 0 (UniMC's reference mask:
    the question and passage see every option, options see only themselves and the context; docs/unimc_and_ppt.md);
    ``attention_mask`` [b, s, s] bool: any mask, query i (row) may attend key j (column).

    ``position_ids`` [b, s]: per-token positions; the relative positions pos[i] - pos[j] are bucketed per sample
    into one [b, s, s] index shared by layers and heads. None: 0..s-1 for every sample (the shared, cached index).

    ``block_position_ids`` [b, s]: GLM's second position row (the place inside a Part-B span, 0 elsewhere). It is
    not an attention input: the first pipeline chunk adds its embedding row to the word vectors (VegaModel.embed),
    it rides here so that every caller that passes a batch's AttentionInputs passes it too.

    ``prefix``: deep-prompt keys/values, one (k, v) pair per layer of this pipeline chunk, each
    [b, heads on this rank, P, d]: visible to every query, without relative-position bias."""
    padding_mask: torch.Tensor
    prefix_lengths: torch.Tensor | None = None
    block_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    block_position_ids: torch.Tensor | None = None
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    context_sees_blocks: bool = False

    BATCH_KEYS: ClassVar[tuple[str, ...]] = ("prefix_lengths", "block_ids", "attention_mask", "position_ids",
                                          "block_position_ids")

    @classmethod
    def from_batch(cls, batch: dict, prefix=None) -> "AttentionInputs":
        """From a batch dict holding ``padding_mask`` and any of BATCH_KEYS (absent or None: not used)."""
        optional = {key: batch.get(key) for key in cls.BATCH_KEYS}
        if optional["attention_mask"] is not None:
            optional["attention_mask"] = optional["attention_mask"].bool()
        return cls(batch["padding_mask"], **optional, prefix=prefix)

    def with_prefix(self, prefix) -> "AttentionInputs":
        return replace(self, prefix=prefix)

    @property
    def prefix_length(self) -> int:
        return 0 if self.prefix is None else self.prefix[0][0].shape[2]

    def allowed(self) -> torch.Tensor | None:
        """The structured and dense masks combined, [b, s, s] bool (True = may attend), or None when there are none."""
        masks = []
        if self.prefix_lengths is not None:
            pos = torch.arange(self.padding_mask.shape[1], device=self.padding_mask.device)
            query, key = pos[None, :, None], pos[None, None, :]
            masks.append((key < self.prefix_lengths[:, None, None]) | (key <= query))
        if self.block_ids is not None:
            query, key = self.block_ids[:, :, None], self.block_ids[:, None, :]
            allowed = (key == 0) | (query == key)
            masks.append(allowed | (query == 0) if self.context_sees_blocks else allowed)
        if self.attention_mask is not None:
            masks.append(self.attention_mask.bool())
        if not masks:
            return None
        allowed = masks[0]
        for mask in masks[1:]:
            allowed = allowed & mask
        return allowed

    def convolution_mask(self) -> torch.Tensor | None:
        """Which neighbours the nGiE convolution after layer 0 may read, [b, s, s] bool, or None (all of them):
        those the attention allows, and with ``block_ids`` only those of the token's own block, so an option's
        edge tokens read nothing outside it whatever the options' order (UniMC; docs/unimc_and_ppt.md)."""
        allowed = self.allowed()
        if self.block_ids is None:
            return allowed
        same_block = self.block_ids[:, :, None] == self.block_ids[:, None, :]
        return same_block if allowed is None else allowed & same_block

    def mask_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask, [b, 1, s, P + s] in ``dtype``: 0 where a query may attend a key, the dtype's lowest
        value elsewhere; the P deep-prompt columns come first and are 0."""
        pm = self.padding_mask
        pair = pm[:, None, :, None] * pm[:, None, None, :]  # [b, 1, s, s], HF's pairwise mask
        allowed = self.allowed()
        if allowed is not None:
            pair = pair * allowed[:, None].to(pair.dtype)
        bias = (1.0 - pair.to(dtype)) * torch.finfo(dtype).min
        return F.pad(bias, (self.prefix_length, 0)) if self.prefix is not None else bias

    def relative_index(self, buckets: int, max_position: int, span: int, block_relative: bool = False
                       ) -> torch.Tensor:
        """The relative-table row of every (query, key): the cached shared [s, s] index without position_ids, else
        [b, s, s] bucketed per sample. With ``block_relative`` (GLM's position 2 as a relative term), two tokens of
        one Part-B span (both with block position > 0 and the same position) take pos2_i - pos2_j instead."""
        if self.position_ids is None:
            return relative_index(self.padding_mask.shape[1], buckets, max_position, span,
                                  str(self.padding_mask.device))
        index = relative_index_per_sample(self.position_ids.long(), buckets, max_position, span)
        if not block_relative or self.block_position_ids is None:
            return index
        pos1, pos2 = self.position_ids.long(), self.block_position_ids.long()
        in_span = pos2 > 0
        same_span = (in_span[:, :, None] & in_span[:, None, :]) & (pos1[:, :, None] == pos1[:, None, :])
        inside = relative_index_per_sample(pos2, buckets, max_position, span)
        return torch.where(same_span, inside, index)
