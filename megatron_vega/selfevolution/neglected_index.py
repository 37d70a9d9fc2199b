"""Self-evolution stage 1 output: which positions of which blocks the model neglects (docs/self_evolution.md).

Selection (pure functions): a token is neglected iff its NLL under the unmasked block exceeds τ (criterion "nll", the
released code's rule, τ = 0.1 nats) or, alternatively, iff the model's argmax is wrong (criterion "argmax"); an
optional per-block cap (absolute and/or a ratio of the block's candidate tokens — not in the official code) keeps the
highest-NLL positions. Only candidates are ever selected: special tokens ([CLS], [SEP], [UNK], [MASK]) and padding
are not. The MLM objective never trains a special as a target, so a small model gives them the highest NLL of a
block; they are not what self-evolution is about, and a cap would otherwise be filled with them first.

Storage: one file per index, a memory-mapped CSR table block id -> sorted int32 positions::

    b"VEGANIDX" | uint64 LE header length | JSON header, space-padded to byte 4096 (arrays start page-aligned)
    | block_ids int64[n] (strictly increasing) | offsets int64[n+1] | positions int32[offsets[n]]   (little-endian)

The header holds the format version, seq_length, the selection rule, count stats and a CRC-32 of the arrays. Each
data-parallel rank writes its own shard files (``write_index``, or ``ShardWriter`` to accumulate and flush numbered
parts); ``merge`` sorts the blocks of any number of shards into one index, byte-identical whatever the number and
order of the shards (a block may appear in one shard only). A shard is itself a valid index.
Every file is written under a temporary name and published with os.replace, so a reader never sees half a file.
``NeglectedIndex`` is a ``Mapping[int, np.ndarray]`` that plugs into ``MLMDataset(mask_override=...)``.
"""
import itertools
import json
import os
import re
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from megatron_vega.errors import VegaInputError

MAGIC = b"VEGANIDX"
VERSION = 1
CRITERIA = ("nll", "argmax")
RULE_KEYS = ("seq_length", "criterion", "threshold", "max_per_block", "max_ratio")  # shards must agree on these
_WRITE_BLOCKS = 1 << 16  # blocks gathered per write when streaming positions to a file
_DATA_START = 4096
_REQUIRED = {"version", "num_blocks", "num_positions", "num_scored_tokens", "crc32", *RULE_KEYS}


def candidates(tokens, is_special) -> np.ndarray:
    """[B, T] bool: the positions stage 1 may select, i.e. every token that is neither special nor padding.
    tokens [B, T]: the unmasked blocks; is_special: the vocabulary's bool table (the pad id is special too)."""
    return ~np.asarray(is_special, dtype=bool)[np.asarray(tokens)]


def select_neglected(nll, candidate_mask, criterion: str = "nll", threshold: float = 0.1, argmax_correct=None,
                     max_per_block: int | None = None, max_ratio: float | None = None) -> list[np.ndarray]:
    """Neglected positions of each block of a batch: one sorted int32 array per row of ``nll``.

    nll [B, T]: −log p(x_t | unmasked block); candidate_mask [B, T]: nonzero where a position may be selected
    (``candidates``: not special, not padding). criterion "nll": nll > threshold. "argmax": argmax_correct [B, T]
    (bool) is False. Caps: at most max_per_block positions, and at most floor(max_ratio · candidates of the block);
    the highest-NLL positions are kept (ties: the earlier position).
    """
    nll = np.asarray(nll, dtype=np.float64)
    allowed = np.asarray(candidate_mask).astype(bool)
    if criterion == "nll":
        chosen = allowed & (nll > threshold)
    elif criterion == "argmax":
        if argmax_correct is None:
            raise ValueError("criterion 'argmax' needs argmax_correct")
        chosen = allowed & ~np.asarray(argmax_correct).astype(bool)
    else:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    out = []
    for row, keep, n_real in zip(nll, chosen, allowed.sum(axis=1)):
        positions = np.flatnonzero(keep)
        cap = len(positions)
        if max_per_block is not None:
            cap = min(cap, max_per_block)
        if max_ratio is not None:
            cap = min(cap, int(max_ratio * n_real))
        if cap < len(positions):
            positions = np.sort(positions[np.argsort(-row[positions], kind="stable")[:cap]])
        out.append(positions.astype(np.int32))
    return out


def _slices(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices of the concatenated ranges [starts[i], starts[i] + counts[i])."""
    total = int(counts.sum())
    first = np.cumsum(counts) - counts
    return np.repeat(starts - first, counts) + np.arange(total, dtype=np.int64)


def _write(path: Path, rule: dict, scored_tokens: int, block_ids: np.ndarray, counts: np.ndarray,
           position_chunks: Iterator[np.ndarray]) -> None:
    """Write an index atomically. block_ids sorted; position_chunks yields the blocks' positions in that order."""
    offsets = np.zeros(len(block_ids) + 1, dtype="<i8")
    np.cumsum(counts, out=offsets[1:])
    arrays = [np.ascontiguousarray(block_ids, dtype="<i8"), offsets]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the index from other users of a shared run directory
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * _DATA_START)  # header placeholder, rewritten once the CRC is known
            crc = 0
            for chunk in itertools.chain(arrays, (np.asarray(c, dtype="<i4") for c in position_chunks)):
                data = chunk.tobytes()
                crc = zlib.crc32(data, crc)
                f.write(data)
            header = dict(format="vega-neglected-index", version=VERSION, **rule, num_blocks=len(block_ids),
                          num_positions=int(offsets[-1]), num_scored_tokens=int(scored_tokens), crc32=crc)
            text = json.dumps(header, sort_keys=True).encode()
            if len(text) > _DATA_START - 16:
                raise ValueError("index header too long")
            f.seek(0)
            f.write(MAGIC + len(text).to_bytes(8, "little") + text.ljust(_DATA_START - 16))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class NeglectedIndex(Mapping):
    """Read-only, memory-mapped block id -> sorted int32 positions. ``verify`` checks the CRC and the structure
    (one pass over the file); without it only the header and the file size are checked."""

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        where = str(self.path)
        try:
            raw = np.memmap(self.path, dtype=np.uint8, mode="r")
        except FileNotFoundError:
            raise VegaInputError(where, "no such file") from None
        except ValueError:  # numpy cannot map an empty file
            raise VegaInputError(where, "empty file") from None
        except OSError as err:  # a directory, no permission
            raise VegaInputError(where, f"cannot read: {err.strerror}") from None
        if len(raw) < 16 or bytes(raw[:8]) != MAGIC:
            raise VegaInputError(where, "not a neglected-token index (bad magic)")
        size = int.from_bytes(bytes(raw[8:16]), "little")
        try:
            header = json.loads(bytes(raw[16:16 + min(size, _DATA_START - 16)]))
            if not _REQUIRED <= set(header):
                raise ValueError
            n, total = int(header["num_blocks"]), int(header["num_positions"])
        except (ValueError, TypeError):  # also a header that is not a JSON object
            raise VegaInputError(where, "corrupt header") from None
        if header["version"] != VERSION:
            raise VegaInputError(where, f"index format version {header['version']}, this code reads {VERSION}")
        start = _DATA_START
        expected = start + 8 * n + 8 * (n + 1) + 4 * total
        if len(raw) != expected:
            raise VegaInputError(where, f"truncated or corrupt: {len(raw)} bytes, the header implies {expected}")
        self.header = header
        self.block_ids = raw[start:start + 8 * n].view("<i8")
        self.offsets = raw[start + 8 * n:start + 16 * n + 8].view("<i8")
        self.positions = raw[start + 16 * n + 8:].view("<i4")
        if verify:
            self._verify(raw[start:])

    def _verify(self, data: np.ndarray) -> None:
        where, h = str(self.path), self.header
        if zlib.crc32(data) != h["crc32"]:
            raise VegaInputError(where, "checksum mismatch (corrupt file)")
        pos = self.positions  # min / max: no temporary the size of the file
        if (self.offsets[0] != 0 or (np.diff(self.offsets) < 0).any() or (np.diff(self.block_ids) <= 0).any()
                or (pos.size and (pos.min() < 0 or pos.max() >= h["seq_length"]))):
            raise VegaInputError(where, "inconsistent CSR layout (offsets, block order or position range)")

    @property
    def rule(self) -> dict:
        return {k: self.header[k] for k in RULE_KEYS}

    def _find(self, block_id) -> int:
        i = int(np.searchsorted(self.block_ids, block_id))
        return i if i < len(self.block_ids) and self.block_ids[i] == block_id else -1

    def __getitem__(self, block_id) -> np.ndarray:
        i = self._find(block_id)
        if i < 0:
            raise KeyError(block_id)
        return np.asarray(self.positions[self.offsets[i]:self.offsets[i + 1]])

    def __contains__(self, block_id) -> bool:
        return self._find(block_id) >= 0

    def __iter__(self) -> Iterator[int]:
        return (int(b) for b in self.block_ids)

    def __len__(self) -> int:
        return len(self.block_ids)

    def __reduce__(self):  # DataLoader workers reopen the file instead of pickling the mapped arrays
        return NeglectedIndex, (self.path, False)

    def stats(self) -> dict:
        """Blocks, positions, fraction of scored tokens neglected, and histogram[k] = blocks with k positions."""
        h = self.header
        return dict(blocks=h["num_blocks"], positions=h["num_positions"], scored_tokens=h["num_scored_tokens"],
                    neglected_fraction=h["num_positions"] / max(h["num_scored_tokens"], 1),
                    histogram=np.bincount(np.diff(self.offsets), minlength=1))


def write_index(path, blocks: Mapping[int, np.ndarray], scored_tokens: int, *, seq_length: int,
                criterion: str = "nll", threshold: float | None = 0.1, max_per_block: int | None = None,
                max_ratio: float | None = None) -> Path:
    """Write block id -> positions (any order; stored sorted, deduplicated) as one index file, atomically.
    ``scored_tokens``: how many tokens of these blocks were candidates (real, not special), for the stats."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    rule = dict(seq_length=seq_length, criterion=criterion, threshold=threshold if criterion == "nll" else None,
                max_per_block=max_per_block, max_ratio=max_ratio)
    ids = np.array(sorted(int(b) for b in blocks), dtype=np.int64)
    clean = {}
    for b in ids.tolist():
        positions = np.unique(np.asarray(blocks[b], dtype=np.int64))
        if positions.size and (positions[0] < 0 or positions[-1] >= seq_length):
            raise ValueError(f"block {b}: positions must lie in [0, {seq_length})")
        clean[b] = positions.astype(np.int32)
    counts = np.array([len(clean[b]) for b in ids.tolist()], dtype=np.int64)
    chunks = (np.concatenate([clean[b] for b in ids[i:i + _WRITE_BLOCKS].tolist()])
              for i in range(0, len(ids), _WRITE_BLOCKS))
    _write(Path(path), rule, scored_tokens, ids, counts, chunks)
    return Path(path)


class ShardWriter:
    """One data-parallel rank's mined positions, written as shard files ``<directory>/rank-RRRRR-part-PPPPP.nidx``.

    ``add`` accumulates blocks in memory; ``flush`` writes them as the next part (call it periodically to bound
    memory and keep progress across restarts; part numbers continue after the parts already on disk). A driver
    that names its shards itself (e.g. by block range) calls ``write_index`` directly.
    """

    def __init__(self, directory, rank: int, **rule):
        if rule.get("criterion", "nll") not in CRITERIA:
            raise ValueError(f"unknown criterion {rule['criterion']!r}; expected one of {CRITERIA}")
        self.directory, self.rank, self.rule = Path(directory), rank, rule  # rule: write_index's keywords
        self.directory.mkdir(parents=True, exist_ok=True)
        self._blocks: dict[int, np.ndarray] = {}
        self._scored_tokens = 0
        parts = [int(m.group(1)) for p in self.directory.glob(f"rank-{rank:05d}-part-*.nidx")
                 if (m := re.fullmatch(r"rank-\d+-part-(\d+)\.nidx", p.name))]
        self._next_part = max(parts, default=-1) + 1

    def add(self, block_id: int, positions, scored_tokens: int) -> None:
        """Positions of one block (any order), and how many of its tokens were candidates (real, not special)."""
        if int(block_id) in self._blocks:
            raise ValueError(f"block {block_id} added twice")
        self._blocks[int(block_id)] = positions
        self._scored_tokens += int(scored_tokens)

    def flush(self) -> Path | None:
        """Write the accumulated blocks as the next shard part (None if there are none) and forget them."""
        if not self._blocks:
            return None
        path = write_index(self.directory / f"rank-{self.rank:05d}-part-{self._next_part:05d}.nidx", self._blocks,
                           self._scored_tokens, **self.rule)
        self._blocks, self._scored_tokens = {}, 0
        self._next_part += 1
        return path


def shard_paths(directory) -> list[Path]:
    """All shard parts in a stage-1 output directory (every rank), for ``merge``."""
    return sorted(Path(directory).glob("rank-*-part-*.nidx"))


def merge(paths, out_path) -> NeglectedIndex:
    """One index from shard files; the result does not depend on how the blocks were split into shards."""
    shards = [NeglectedIndex(p) for p in paths]
    if not shards:
        raise VegaInputError(str(out_path), "no shard files to merge")
    for s in shards[1:]:
        for key in RULE_KEYS:
            if s.header[key] != shards[0].header[key]:
                raise VegaInputError(str(s.path), f"{key} {s.header[key]!r} differs from {shards[0].path} "
                                                  f"({shards[0].header[key]!r})")
    ids = np.concatenate([s.block_ids for s in shards])
    source = np.concatenate([np.full(len(s), k) for k, s in enumerate(shards)])
    starts = np.concatenate([s.offsets[:-1] for s in shards])
    counts = np.concatenate([np.diff(s.offsets) for s in shards])
    order = np.argsort(ids, kind="stable")
    ids, source, starts, counts = ids[order], source[order], starts[order], counts[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        i = dup[0]
        raise VegaInputError(str(shards[source[i + 1]].path),
                             f"block {ids[i]} also appears in {shards[source[i]].path}")

    def chunks():
        for a in range(0, len(ids), _WRITE_BLOCKS):
            part = slice(a, a + _WRITE_BLOCKS)
            out = np.empty(int(counts[part].sum()), dtype=np.int32)
            first = np.cumsum(counts[part]) - counts[part]
            for k in np.unique(source[part]):
                sel = source[part] == k
                n_sel = counts[part][sel]
                out[_slices(first[sel], n_sel)] = shards[k].positions[_slices(starts[part][sel], n_sel)]
            yield out

    out_path = Path(out_path)
    _write(out_path, shards[0].rule, sum(s.header["num_scored_tokens"] for s in shards), ids, counts, chunks())
    return NeglectedIndex(out_path)
