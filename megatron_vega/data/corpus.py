"""Megatron-core indexed datasets (``PREFIX.bin`` token ids + ``PREFIX.idx`` index): open with checks, write atomically.

Our files hold one sequence per document (the document's token ids, no special tokens); datasets written by
Megatron-LM's own preprocess_data.py (several sequences per document) read the same way.

megatron.core is imported inside the functions that need it: importing it takes several seconds, and the tools
should report a bad input before paying for that.
"""
import os
import warnings

import numpy as np

from megatron_vega.errors import VegaInputError

_INDEX_HEADER = b"MMIDIDX\x00\x00"  # megatron-core's .idx magic


def _indexed_dataset_module():
    """megatron.core.datasets.indexed_dataset, without megatron.core's import-time notes about missing
    Transformer Engine / Apex (irrelevant to data files, and the tools promise one-line errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex", category=UserWarning)
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def strip_suffix(prefix: str) -> str:
    """'data/x.bin' or 'data/x.idx' -> 'data/x' (users often pass a file name where Megatron wants a prefix)."""
    return prefix[:-4] if prefix.endswith((".bin", ".idx")) else prefix


def open_indexed_dataset(prefix: str):
    """``IndexedDataset(prefix)``, or VegaInputError naming the missing, mismatched or unreadable file."""
    module = _indexed_dataset_module()
    prefix = strip_suffix(prefix)
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    has_bin, has_idx = os.path.isfile(bin_path), os.path.isfile(idx_path)
    if not has_bin and not has_idx:
        raise VegaInputError(prefix, "no indexed dataset here: neither .bin nor .idx exists "
                                     "(make one with tools/preprocess_data.py)")
    if not has_idx:
        raise VegaInputError(idx_path, "missing (its .bin exists); rerun tools/preprocess_data.py")
    if not has_bin:
        raise VegaInputError(bin_path, "missing (its .idx exists); rerun tools/preprocess_data.py")
    with open(idx_path, "rb") as f:
        if f.read(len(_INDEX_HEADER)) != _INDEX_HEADER:
            raise VegaInputError(idx_path, "not a Megatron indexed dataset index (wrong header)")
    try:
        dataset = module.IndexedDataset(prefix)
    except (AssertionError, ValueError, OSError, IndexError) as err:
        raise VegaInputError(idx_path, f"not a readable Megatron index ({type(err).__name__}: {err})") from None
    expected = int(dataset.sequence_lengths.sum(dtype=np.int64)) * module.DType.size(dataset.index.dtype)
    actual = os.path.getsize(bin_path)
    if actual != expected:
        raise VegaInputError(bin_path, f"holds {actual} bytes but its .idx describes {expected}; "
                                       "the pair is from different runs or truncated")
    return dataset


class IndexedDatasetWriter:
    """``IndexedDatasetBuilder`` writing ``prefix``.bin/.idx under temporary names, renamed only by ``publish()``.

    A context manager: leaving it without ``publish()`` (an exception) removes the temporary files, so a failed
    run leaves no output. ``publish`` renames the .bin first and the .idx last; ``open_indexed_dataset`` rejects
    a pair whose sizes disagree. The index dtype is the smallest that holds ``vocab_size`` ids.
    """

    def __init__(self, prefix: str, vocab_size: int):
        self.prefix = prefix
        self.vocab_size = vocab_size
        self._temp = {ext: f"{prefix}.{ext}.tmp-{os.getpid()}" for ext in ("bin", "idx")}
        self.documents = 0
        self.tokens = 0

    def __enter__(self) -> "IndexedDatasetWriter":
        import torch  # loaded with megatron.core anyway; add_item takes a tensor

        self._as_tensor = torch.from_numpy
        module = _indexed_dataset_module()
        self._builder = module.IndexedDatasetBuilder(self._temp["bin"],
                                                     dtype=module.DType.optimal_dtype(self.vocab_size))
        return self

    def add_document(self, ids: np.ndarray) -> None:
        self._builder.add_item(self._as_tensor(np.ascontiguousarray(ids)))
        self._builder.end_document()
        self.documents += 1
        self.tokens += len(ids)

    def publish(self) -> None:
        if self.documents == 0:
            raise VegaInputError(self.prefix, "no documents to write")
        self._builder.finalize(self._temp["idx"])
        os.replace(self._temp["bin"], self.prefix + ".bin")
        os.replace(self._temp["idx"], self.prefix + ".idx")

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._builder.data_file.closed:
            self._builder.data_file.close()
        for temp in self._temp.values():
            if os.path.exists(temp):
                os.remove(temp)
