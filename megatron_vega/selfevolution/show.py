"""Look at what stage 1 mined: blocks of a neglected-token index as pieces of the tokenizer, the neglected ones
marked (``tools/self_questioning.py show``).

The blocks are rebuilt from the corpora the index was mined from, with the index's sequence length and the
training pipeline's block table, so the positions line up with what stage 2 masks. Padding at the end of a block
is not shown; every other position is, specials included, so positions index ``pieces`` directly.
"""
import json
import sys
from collections.abc import Iterator

import numpy as np

from megatron_vega.data.config import parse_data_path
from megatron_vega.data.corpus import open_indexed_dataset
from megatron_vega.data.mlm_dataset import BlockTable
from megatron_vega.data.tokenizer import WORD_START, VegaTokenizer
from megatron_vega.errors import VegaInputError
from megatron_vega.selfevolution.neglected_index import NeglectedIndex

MARK_OPEN, MARK_CLOSE = "[[", "]]"


class CorpusBlocks:
    """Global block id -> unmasked block, over the --data-path corpora in the order given (MLM dataset's ids)."""

    def __init__(self, data_path: list[str], seq_length: int, vocab):
        prefixes, _ = parse_data_path(data_path)
        self.tables = [BlockTable(open_indexed_dataset(p), seq_length, vocab) for p in prefixes]
        self.offsets = np.concatenate([[0], np.cumsum([t.num_blocks for t in self.tables])])

    @property
    def num_blocks(self) -> int:
        return int(self.offsets[-1])

    def block(self, block_id: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, block_id, side="right")) - 1
        return self.tables[k].block(block_id - int(self.offsets[k]))


def mined_blocks(index_path: str, data_path: list[str], tokenizer_model: str, count: int) -> Iterator[dict]:
    """The first ``count`` blocks of the index: {"block", "pieces", "neglected", "neglected_pieces"}."""
    if count < 1:
        raise VegaInputError("--blocks", f"must be at least 1, got {count}")
    index = NeglectedIndex(index_path)
    vocab = VegaTokenizer(tokenizer_model)
    corpus = CorpusBlocks(data_path, int(index.header["seq_length"]), vocab)
    for block_id in list(index)[:count]:
        if block_id >= corpus.num_blocks:
            raise VegaInputError("--data-path", f"the index names block {block_id} but these corpora hold "
                                                f"{corpus.num_blocks} blocks: not the data the index was mined from")
        tokens = corpus.block(block_id)
        real = tokens[:len(tokens) - int(np.argmax(tokens[::-1] != vocab.pad_id))]  # trailing padding dropped
        if real.size and real.max() >= vocab.vocab_size:
            raise VegaInputError("--tokenizer-model", f"block {block_id} holds id {int(real.max())}, beyond the "
                                                      f"tokenizer's {vocab.vocab_size}: not the corpus's tokenizer")
        pieces = [vocab.id_to_piece(int(t)) for t in real]
        neglected = [int(p) for p in index[block_id]]
        yield {"block": block_id, "pieces": pieces, "neglected": neglected,
               "neglected_pieces": [vocab.id_to_piece(int(tokens[p])) for p in neglected]}


def as_text(block: dict) -> str:
    """One block as text: pieces joined the sentencepiece way, neglected pieces between [[ and ]]."""
    marked = set(block["neglected"])
    out = []
    for position, piece in enumerate(block["pieces"]):
        space = " " if piece.startswith(WORD_START) else ""
        word = piece[len(space):] if space else piece
        out.append(f"{space}{MARK_OPEN}{word}{MARK_CLOSE}" if position in marked else f"{space}{word}")
    return (f"block {block['block']} ({len(marked)} neglected of {len(block['pieces'])} pieces):\n"
            + "".join(out).strip())


def show(index_path: str, data_path: list[str], tokenizer_model: str, count: int, as_json: bool,
         out=sys.stdout) -> None:
    for block in mined_blocks(index_path, data_path, tokenizer_model, count):
        print(json.dumps(block, ensure_ascii=False) if as_json else as_text(block) + "\n", file=out, flush=True)
