import os

import numpy as np
import pytest

from megatron_vega.data.corpus import open_indexed_dataset
from megatron_vega.errors import VegaInputError
from tests.data.conftest import write_corpus


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "c", [[5, 6, 7], [8, 9], [10, 11, 12, 13]], sequences_per_document=2)


def test_reads_through_indexed_dataset(corpus):
    dataset = open_indexed_dataset(corpus + ".bin")  # a file name works as well as the prefix
    assert type(dataset).__name__ == "IndexedDataset"
    seq_ends = np.concatenate([[0], np.cumsum(dataset.sequence_lengths)])
    assert np.diff(seq_ends[dataset.document_indices]).tolist() == [3, 2, 4]  # tokens per document
    assert np.concatenate([dataset[i] for i in range(len(dataset))]).tolist() == list(range(5, 14))


@pytest.mark.parametrize("remove, named", [(".idx", ".idx"), (".bin", ".bin")])
def test_half_a_pair_names_the_missing_file(corpus, remove, named):
    os.remove(corpus + remove)
    with pytest.raises(VegaInputError) as err:
        open_indexed_dataset(corpus)
    assert err.value.where == corpus + named and "missing" in err.value.problem


def test_no_dataset_and_truncated_bin(corpus, tmp_path):
    with pytest.raises(VegaInputError, match="neither .bin nor .idx"):
        open_indexed_dataset(str(tmp_path / "absent"))
    with open(corpus + ".bin", "r+b") as f:
        f.truncate(4)
    with pytest.raises(VegaInputError) as err:
        open_indexed_dataset(corpus)
    assert err.value.where == corpus + ".bin" and "truncated" in err.value.problem


def test_garbage_index(corpus):
    with open(corpus + ".idx", "wb") as f:
        f.write(b"not an index")
    with pytest.raises(VegaInputError) as err:
        open_indexed_dataset(corpus)
    assert err.value.where == corpus + ".idx"
