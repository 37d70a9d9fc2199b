"""The sentencepiece tokenizer and the vocabulary facts the MLM pipeline needs.

Our tokenizers (tools/train_tokenizer.py) put [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3 (sentencepiece's pad/bos/eos/unk
slots, so they are control symbols) and [MASK]=4 (a user-defined symbol, so the literal text "[MASK]" encodes to
it, which prompts need). Hugging Face's ``DebertaV2Tokenizer.from_pretrained(dir)`` loads the same file renamed
``spm.model`` with the same ids.

A foreign model (e.g. one with <unk>, <s>, </s>) still loads: [CLS]/[SEP]/[PAD]/[MASK] are looked up under their
common names (<s>/<cls>, </s>/<sep>, <pad>, <mask>) and sentencepiece's bos/eos/pad slots. Whatever is still
missing is appended after the last piece, in the order [CLS], [SEP], [MASK], [PAD], the way Hugging Face adds
tokens to a vocabulary: the model's embedding simply gets those extra rows. ``appended`` lists them.
"""
from pathlib import Path

import numpy as np
import sentencepiece as spm

from megatron_vega.errors import VegaInputError

# Our piece names, in id order (train_tokenizer.py uses this to lay the model out).
PAD, CLS, SEP, UNK, MASK = "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"
WORD_START = "\u2581"  # sentencepiece's "▁": the piece begins a new word

_ALIASES = {CLS: ("<s>", "<cls>"), SEP: ("</s>", "<sep>"), MASK: ("<mask>",), PAD: ("<pad>",)}


class VegaTokenizer:
    """A sentencepiece model with our special ids, plus per-id facts for masking (``word_start``, ``special_ids``)."""

    def __init__(self, model_path: str | Path):
        self.path = str(model_path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.path)
        except (OSError, RuntimeError) as err:
            raise VegaInputError(self.path, _load_problem(err)) from None
        pieces = self._sp.get_piece_size()
        self.unk_id = self._sp.unk_id()
        slots = {CLS: self._sp.bos_id(), SEP: self._sp.eos_id(), PAD: self._sp.pad_id(), MASK: -1}
        found = {name: self._find(name, slots[name]) for name in (CLS, SEP, MASK, PAD)}
        self.appended = [name for name in (CLS, SEP, MASK, PAD) if found[name] is None]
        for offset, name in enumerate(self.appended):
            found[name] = pieces + offset
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = (found[n] for n in (CLS, SEP, MASK, PAD))
        self.vocab_size = pieces + len(self.appended)

        special = np.zeros(self.vocab_size, dtype=bool)
        word_start = np.ones(self.vocab_size, dtype=bool)
        for i in range(pieces):
            special[i] = self._sp.is_control(i) or self._sp.is_unknown(i) or self._sp.is_unused(i)
            word_start[i] = special[i] or self._sp.id_to_piece(i).startswith(WORD_START)
        special[[self.cls_id, self.sep_id, self.mask_id, self.pad_id, self.unk_id]] = True
        special[pieces:] = True
        word_start |= special
        self.is_special = special
        self.special_ids = np.flatnonzero(special)
        self.word_start = word_start

    def _find(self, name: str, slot: int) -> int | None:
        for piece in (name, *_ALIASES[name]):
            i = self._sp.piece_to_id(piece)
            if i != self.unk_id:  # piece_to_id answers unk for a missing piece
                return i
        return slot if slot >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def decode(self, ids) -> str:
        """Text of ``ids``; control pieces and appended ids ([CLS], [SEP], [PAD]…) are dropped."""
        pieces = self._sp.get_piece_size()
        return self._sp.decode([int(i) for i in ids if 0 <= int(i) < pieces])

    def id_to_piece(self, i: int) -> str:
        size = self._sp.get_piece_size()
        return self._sp.id_to_piece(int(i)) if i < size else self.appended[i - size]


class SyntheticVocab:
    """The vocabulary facts of VegaTokenizer without a model file (mock data, tests): our id layout (specials
    0–4), and every id a word start unless ``word_start`` (bool per id) says otherwise."""

    def __init__(self, vocab_size: int, word_start: np.ndarray | None = None):
        if vocab_size <= 5:
            raise ValueError(f"a synthetic vocabulary needs more than 5 ids, got {vocab_size}")
        self.vocab_size = vocab_size
        self.pad_id, self.cls_id, self.sep_id, self.unk_id, self.mask_id = range(5)
        self.is_special = np.zeros(vocab_size, dtype=bool)
        self.is_special[:5] = True
        self.special_ids = np.flatnonzero(self.is_special)
        starts = np.ones(vocab_size, dtype=bool) if word_start is None else np.asarray(word_start, dtype=bool)
        self.word_start = starts | self.is_special


def check_vocab(tokenizer, model_vocab_size: int, path: str) -> None:
    """Raise VegaInputError (naming ``path``) when the tokenizer has ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > model_vocab_size:
        raise VegaInputError(path, f"tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary holds only "
                                   f"{model_vocab_size}; use the tokenizer the model was trained with")


def _load_problem(err: Exception) -> str:
    text = str(err)
    if "No such file" in text or "NOT_FOUND" in text:
        return "no such file"
    if "Is a directory" in text:
        return "is a directory, expected a sentencepiece .model file"
    return "not a sentencepiece model (could not parse it)"


def vocabulary(run):
    """The run's tokenizer (checked against the model's vocabulary), or a synthetic one for --mock-data."""
    if run.data.tokenizer_model:
        tokenizer = VegaTokenizer(run.data.tokenizer_model)
        check_vocab(tokenizer, run.model.vocab_size, run.data.tokenizer_model)
        return tokenizer
    return SyntheticVocab(run.model.vocab_size)
