"""The MLM dataset: corpus -> fixed-size blocks with stable ids -> seeded sample order -> masked samples (numpy).

Blocks. The documents of a corpus, each followed by [SEP], form one token stream; block b is
``[CLS] + stream[b*(s-2) : (b+1)*(s-2)] + [SEP]`` for sequence length s, padded with [PAD] only in the last block.
So blocks waste no space, a block may hold the end of one document and the start of the next (separated by
[SEP], as in RoBERTa's full-sentence packing), and the block table is two cumulative sums over the index. A
block's id is its index in this list, counted across the --data-path corpora in the order given (corpus 2's ids
start after corpus 1's): it depends only on the corpora and s, not on seeds, weights, splits, parallel layout or
restarts. Self-evolution stage 1 stores its mined positions per block id; stage 2 reads them back.

Splits. --split "949,50,1" gives each corpus's train/valid/test as contiguous block ranges (Megatron's rounding).

Sample order. Global sample index i -> (corpus, epoch, block): the corpora are interleaved by a fixed pattern of
period P holding each corpus in proportion to its weight (weights from --data-path, else block counts), so
corpus k's n-th sample is found in O(1); the n-th sample of a corpus with N blocks is epoch n // N, entry n % N of
a permutation seeded by (seed, corpus range, epoch). Every sample is a pure function of (seed, i), so a run
resumed at ``consumed_samples`` continues exactly where an uninterrupted one would, for any number of
data-parallel ranks (see ``sampler``). Masking is a pure function of (seed, block id, epoch): ``masking``.

Each sample: ``tokens`` int64[s] (input), ``labels`` int64[s] (the original block), ``loss_mask`` float32[s] (1 where
scored), ``padding_mask`` int64[s] (1 real token, 0 pad), ``block_id`` int64.
"""
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from megatron_vega.data.config import DataConfig, parse_data_path, parse_split, split_ranges
from megatron_vega.data.corpus import open_indexed_dataset
from megatron_vega.data.masking import mask_block, sample_rng

BLEND_RESOLUTION = 10_000  # weights are rounded to 1/10000 to make the blend pattern periodic
MOCK_BLOCKS = 1 << 20      # blocks in the synthetic corpus before --split
_SHUFFLE_STREAM = 0x5348  # distinguishes the shuffle's and mock data's seeds from the masking seeds
_MOCK_STREAM = 0x4D4B


class BlockTable:
    """A corpus (megatron-core IndexedDataset) cut into blocks of ``seq_length`` tokens (module docstring)."""

    def __init__(self, dataset, seq_length: int, vocab):
        self.dataset = dataset
        self.seq_length = seq_length
        self.vocab = vocab
        self.content = seq_length - 2  # stream tokens per block between [CLS] and [SEP]
        lengths = dataset.sequence_lengths.astype(np.int64)
        ends_document = np.zeros(len(lengths), dtype=bool)
        doc_bounds = dataset.document_indices
        ends_document[doc_bounds[1:][doc_bounds[1:] > doc_bounds[:-1]] - 1] = True
        self._seq_lengths = lengths
        self._ends_document = ends_document
        # Stream position where each sequence starts (a document's last sequence is followed by its [SEP]).
        self._seq_starts = np.concatenate([[0], np.cumsum(lengths + ends_document)])
        stream_length = int(self._seq_starts[-1])
        self.num_blocks = -(-stream_length // self.content)

    def block(self, b: int) -> np.ndarray:
        start = b * self.content
        stop = min(start + self.content, int(self._seq_starts[-1]))
        first = int(np.searchsorted(self._seq_starts, start, side="right")) - 1
        last = int(np.searchsorted(self._seq_starts, stop, side="left"))
        pieces = [[self.vocab.cls_id]]
        for seq in range(first, last):
            seq_start, length = int(self._seq_starts[seq]), int(self._seq_lengths[seq])
            lo, hi = max(start - seq_start, 0), stop - seq_start  # this sequence's part of the block
            if lo < min(hi, length):
                pieces.append(self.dataset.get(seq, offset=lo, length=min(hi, length) - lo))
            if self._ends_document[seq] and lo <= length < hi:
                pieces.append([self.vocab.sep_id])
        pieces.append([self.vocab.sep_id])
        return _pad(np.concatenate(pieces).astype(np.int64), self.seq_length, self.vocab.pad_id)


class MockBlocks:
    """Synthetic blocks, a pure function of (seed, block id): random non-special tokens, one in ten blocks short."""

    def __init__(self, num_blocks: int, seq_length: int, vocab, seed: int):
        self.num_blocks, self.seq_length, self.vocab, self.seed = num_blocks, seq_length, vocab, seed
        self._pool = np.flatnonzero(~vocab.is_special)

    def block(self, b: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_MOCK_STREAM, self.seed, b])))
        content = self.seq_length - 2
        length = content if rng.random() < 0.9 else int(rng.integers(1, content + 1))
        body = self._pool[rng.integers(0, len(self._pool), size=length)]
        tokens = np.concatenate([[self.vocab.cls_id], body, [self.vocab.sep_id]]).astype(np.int64)
        return _pad(tokens, self.seq_length, self.vocab.pad_id)


def _pad(tokens: np.ndarray, seq_length: int, pad_id: int) -> np.ndarray:
    return np.concatenate([tokens, np.full(seq_length - len(tokens), pad_id, dtype=np.int64)])


@dataclass(frozen=True)
class BlockRange:
    """Blocks [start, stop) of ``table``; their global ids are ``id_offset + b``."""
    table: BlockTable | MockBlocks
    start: int
    stop: int
    id_offset: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


def blend_pattern(weights: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pattern, rank, counts): one period of the interleave. ``pattern[r]`` is the corpus of the period's r-th
    sample, ``rank[r]`` how many samples of that corpus came before it in the period, ``counts[k]`` corpus k's
    samples per period. Greedy: each step takes the corpus furthest behind its target (Megatron's rule)."""
    total = sum(weights)
    counts = np.array([max(1, round(w / total * BLEND_RESOLUTION)) if w > 0 else 0 for w in weights], dtype=np.int64)
    counts //= np.gcd.reduce(counts[counts > 0]) if (counts > 0).any() else 1
    period = int(counts.sum())
    pattern = np.empty(period, dtype=np.int64)
    rank = np.empty(period, dtype=np.int64)
    taken = np.zeros(len(counts), dtype=np.int64)
    for r in range(period):
        k = int(np.argmax(counts * (r + 1) / period - taken))
        pattern[r], rank[r] = k, taken[k]
        taken[k] += 1
    return pattern, rank, counts


class MLMDataset:
    """Masked samples from one split of one or more corpora; any index i >= 0 is valid (epochs repeat)."""

    def __init__(self, parts: list[BlockRange], vocab, seed: int, *, weights: list[float] | None = None,
                 mask_prob: float = 0.15, random_token_prob: float = 0.1, leave_unmasked_prob: float = 0.1,
                 whole_word_masking: bool = False, unmasked: bool = False,
                 mask_override: Mapping[int, np.ndarray] | None = None):
        if unmasked and mask_override is not None:
            raise ValueError("an unmasked (stage 1) dataset takes no mask positions")
        weights = [p.size for p in parts] if weights is None else weights
        kept = [(p, w) for p, w in zip(parts, weights) if p.size > 0 and w > 0]
        if not kept:
            raise ValueError("no blocks to sample from (empty split or zero weights)")
        self.parts = [p for p, _ in kept]
        self.vocab, self.seed = vocab, seed
        self.seq_length = self.parts[0].table.seq_length
        self._pattern, self._rank, self._counts = blend_pattern([w for _, w in kept])
        self._masking = dict(mask_prob=mask_prob, random_token_prob=random_token_prob,
                             leave_unmasked_prob=leave_unmasked_prob, whole_word=whole_word_masking,
                             random_pool=np.flatnonzero(~vocab.is_special))
        self.unmasked = unmasked
        self.mask_override = mask_override
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}  # part -> (epoch, permutation), latest only

    def __len__(self) -> int:
        """Blocks in the split (one pass); indices beyond continue into later epochs."""
        return sum(p.size for p in self.parts)

    @property
    def block_ids(self) -> np.ndarray:
        """Global ids of every block of this split, in corpus order (for one ordered pass, e.g. stage 1)."""
        return np.concatenate([np.arange(p.start, p.stop) + p.id_offset for p in self.parts])

    def locate(self, index: int) -> tuple[int, int, int]:
        """Global sample index -> (part, epoch, block id)."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        period, r = divmod(index, len(self._pattern))
        k = int(self._pattern[r])
        n = period * int(self._counts[k]) + int(self._rank[r])  # index among part k's samples
        part = self.parts[k]
        epoch, position = divmod(n, part.size)
        block = part.start + int(self._permutation(k, epoch)[position])
        return k, epoch, part.id_offset + block

    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        cached = self._permutations.get(k)
        if cached is None or cached[0] != epoch:
            part = self.parts[k]
            key = [_SHUFFLE_STREAM, self.seed, part.id_offset + part.start, part.size, epoch]
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
            cached = self._permutations[k] = (epoch, rng.permutation(part.size))
        return cached[1]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        k, epoch, block_id = self.locate(int(index))
        part = self.parts[k]
        return self.sample(part.table.block(block_id - part.id_offset), block_id, epoch)

    def sample(self, block: np.ndarray, block_id: int, epoch: int) -> dict[str, np.ndarray]:
        """The sample of ``block`` (ids as laid out by the table) for this dataset's masking policy."""
        positions = self.mask_override.get(block_id) if self.mask_override is not None else None
        tokens, scored = mask_block(block, sample_rng(self.seed, block_id, epoch), self.vocab,
                                    positions=positions, unmasked=self.unmasked, **self._masking)
        return {
            "tokens": tokens.astype(np.int64),
            "labels": block.astype(np.int64),
            "loss_mask": scored.astype(np.float32),
            "padding_mask": (block != self.vocab.pad_id).astype(np.int64),
            "block_id": np.int64(block_id),
        }

    def sample_for_block(self, block_id: int, epoch: int = 0) -> dict[str, np.ndarray]:
        """The sample of a given global block id (it must belong to this split)."""
        for part in self.parts:
            if part.start <= block_id - part.id_offset < part.stop:
                return self.sample(part.table.block(block_id - part.id_offset), block_id, epoch)
        raise KeyError(f"block {block_id} is not in this split")


def build_mlm_datasets(config: DataConfig, vocab, seed: int, *, unmasked: bool = False,
                       mask_override: Mapping[int, np.ndarray] | None = None) -> list[MLMDataset | None]:
    """[train, valid, test] datasets (None for an empty split) as --data-path/--split/--mock-data describe.

    ``vocab`` is a VegaTokenizer (or SyntheticVocab for mock data). ``mask_override`` (block id -> positions,
    self-evolution stage 2) applies to the train split only; valid and test keep random masking.
    """
    config.validate()
    masking = dict(mask_prob=config.mask_prob, random_token_prob=config.random_token_prob,
                   leave_unmasked_prob=config.leave_unmasked_prob, whole_word_masking=config.whole_word_masking,
                   unmasked=unmasked)
    fractions = parse_split(config.split)
    if config.mock_data:
        tables, weights = [MockBlocks(MOCK_BLOCKS, config.seq_length, vocab, seed)], None
    else:
        prefixes, weights = parse_data_path(config.data_path)
        tables = [BlockTable(open_indexed_dataset(p), config.seq_length, vocab) for p in prefixes]
    offsets = np.concatenate([[0], np.cumsum([t.num_blocks for t in tables])])
    ranges = [split_ranges(t.num_blocks, fractions) for t in tables]
    datasets = []
    for split in range(3):
        parts = [BlockRange(t, *r[split], int(offset)) for t, r, offset in zip(tables, ranges, offsets)]
        if sum(p.size for p in parts) == 0:
            datasets.append(None)
            continue
        datasets.append(MLMDataset(parts, vocab, seed, weights=weights,
                                   mask_override=mask_override if split == 0 else None, **masking))
    return datasets
