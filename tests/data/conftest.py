import subprocess
import sys

import numpy as np
import pytest

from megatron_vega.data.embedded_corpus import write_embedded_corpus
from megatron_vega.data.mlm_dataset import BlockRange, MLMDataset, MockBlocks
from megatron_vega.data.spm_training import train_tokenizer
from tests.conftest import REPO


def run_tool(script: str, *args, cwd=None) -> subprocess.CompletedProcess:
    """Run tools/<script> (or a -m module when script starts with '-m ') in a fresh interpreter."""
    tool = str(REPO / "tools" / script)
    command = [sys.executable, *script.split()] if script.startswith("-m ") else [sys.executable, tool]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, cwd=cwd or REPO,
                          timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, where: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {where}"), result.stderr


@pytest.fixture(scope="session")
def embedded_jsonl(tmp_path_factory):
    return write_embedded_corpus(tmp_path_factory.mktemp("embedded") / "corpus.jsonl")


@pytest.fixture(scope="session")
def spm_model(embedded_jsonl, tmp_path_factory) -> str:
    """A tiny tokenizer of ours (unigram, 400 pieces) trained on the embedded corpus: quick and always available."""
    prefix = tmp_path_factory.mktemp("spm") / "tiny"
    return train_tokenizer([str(embedded_jsonl)], str(prefix), 400, model_type="unigram", character_coverage=1.0,
                           input_sentence_size=3000).model_path


def write_corpus(prefix, documents, vocab_size=1000, sequences_per_document=1):
    """An indexed dataset holding ``documents`` (lists of ids), each split into that many sequences."""
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(vocab_size))
    for doc in documents:
        for piece in np.array_split(np.asarray(doc, dtype=np.int64), sequences_per_document):
            builder.add_item(torch.from_numpy(piece))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def mock_mlm_dataset(num_blocks: int, seq_length: int, vocab, seed: int, **kwargs) -> MLMDataset:
    """An MLMDataset over ``num_blocks`` synthetic blocks (what --mock-data reads), all in one split."""
    return MLMDataset([BlockRange(MockBlocks(num_blocks, seq_length, vocab, seed), 0, num_blocks)], vocab, seed,
                      **kwargs)
