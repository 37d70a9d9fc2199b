"""``self_questioning.py show``: the blocks of an index rebuilt from the corpus, neglected pieces marked; one-line
errors for an index that does not belong to the corpus."""
import io
import json

import numpy as np
import pytest

from megatron_vega.errors import VegaInputError
from megatron_vega.selfevolution.neglected_index import write_index
from megatron_vega.selfevolution.show import show
from tests.data.conftest import assert_one_line_error, run_tool, write_corpus

SEQ = 24


@pytest.fixture(scope="module")
def corpus(embedded_jsonl, spm_model, tmp_path_factory):
    from megatron_vega.data.tokenizer import VegaTokenizer
    tokenizer = VegaTokenizer(spm_model)
    docs = [tokenizer.encode(json.loads(line)["text"])[:50] for line in embedded_jsonl.read_text().splitlines()[:4]]
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs", docs), docs


def _shown(index, corpus, spm, blocks, as_json):
    out = io.StringIO()
    show(str(index), [corpus], spm, blocks, as_json, out=out)
    return out.getvalue()


def test_json_and_text_show_the_mined_pieces(corpus, spm_model, tmp_path):
    prefix, docs = corpus
    write_index(tmp_path / "idx", {0: np.array([1, 3]), 2: np.array([5])}, 100, seq_length=SEQ)
    blocks = [json.loads(line) for line in _shown(tmp_path / "idx", prefix, spm_model, 5, True).splitlines()]
    assert [b["block"] for b in blocks] == [0, 2]
    first = blocks[0]
    assert first["pieces"][0] == "[CLS]" and len(first["pieces"]) == SEQ  # the first block is full
    assert first["neglected"] == [1, 3]
    assert first["neglected_pieces"] == [first["pieces"][1], first["pieces"][3]]
    from megatron_vega.data.tokenizer import VegaTokenizer
    vocab = VegaTokenizer(spm_model)
    assert first["pieces"][1:SEQ - 1] == [vocab.id_to_piece(i) for i in docs[0][:SEQ - 2]]  # blocks as trained

    text = _shown(tmp_path / "idx", prefix, spm_model, 1, False)
    assert text.startswith("block 0 (2 neglected of 24 pieces):\n[CLS]")
    word = first["pieces"][1].lstrip("\u2581")
    assert f"[[{word}]]" in text and "\u2581" not in text
    assert text.count("[[") == 2


def test_an_index_of_other_data_is_one_line_error(corpus, spm_model, tmp_path):
    prefix, _ = corpus
    write_index(tmp_path / "idx", {10_000: np.array([1])}, 10, seq_length=SEQ)
    with pytest.raises(VegaInputError, match="--data-path: the index names block 10000"):
        _shown(tmp_path / "idx", prefix, spm_model, 1, True)
    with pytest.raises(VegaInputError, match="--blocks"):
        _shown(tmp_path / "idx", prefix, spm_model, 0, True)
    missing = run_tool("self_questioning.py", "show", "--index", tmp_path / "none.nidx", "--data-path", prefix,
                       "--tokenizer-model", spm_model)
    assert_one_line_error(missing, str(tmp_path / "none.nidx"))
