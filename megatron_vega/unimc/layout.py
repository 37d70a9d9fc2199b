"""UniMC's input layout (docs/unimc_and_ppt.md, "Layout"): every option behind an O-MASK, options isolated.

    [CLS] [O-MASK] opt_1 [O-MASK] opt_2 ... [O-MASK] opt_K [SEP] question [SEP] passage [SEP] (passage_b [SEP])

* The O-MASK is the tokenizer's [MASK]; O-MASK k sits at m_k (m_1 = 1, m_{k+1} = m_k + len(opt_k) + 1) and the
  [SEP] closing the options at m_{K+1}. Each option is tokenised on its own and the ids concatenated (UniMC's
  reference tokenises the joined string but counts each option separately; the two can disagree).
* Positions: [CLS] 0; every option block restarts at 1 ([O-MASK] 1, its tokens 2, 3, ...); the rest continues from
  the largest option position + 1. So an option's positions do not depend on the options before it.
* Blocks (``AttentionInputs.block_ids``): 0 for [CLS] and everything from m_{K+1} on (the shared context), k + 1
  for the O-MASK and tokens of option k (0-based).
* Truncation: while the options take more than ``seq_length - 32`` tokens, every option is halved (UniMC's rule);
  the question and passages then share what is left, the longest cut first. Empty question / passage_b are dropped.
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron_vega.errors import VegaInputError

NOT_LABELLED = -100  # cross_entropy's ignore_index
OPTION_RESERVE = 32  # UniMC leaves at least this many tokens to the text after the options


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: the unit UniMC scores."""
    question: str
    passage: str
    options: tuple[str, ...]
    label: int | None  # index of the right option; None when unlabelled
    passage_b: str = ""


@dataclass(frozen=True)
class UniMCSample:
    tokens: tuple[int, ...]
    position_ids: tuple[int, ...]
    block_ids: tuple[int, ...]
    omask: tuple[int, ...]  # index of each option's O-MASK
    text_start: int  # first index after the [SEP] that closes the options (text MLM masks from here)
    label: int  # right option, NOT_LABELLED when unknown


def verbalizer_id(tokenizer, word: str, flag: str) -> int:
    """The id of ``word`` when the tokenizer writes it as one piece; a one-line error naming ``flag`` otherwise."""
    ids = tokenizer.encode(word)
    if len(ids) != 1:
        pieces = " ".join(tokenizer.id_to_piece(i) for i in ids)
        raise VegaInputError(flag, f"{word!r} is {len(ids)} pieces of the tokenizer ({pieces}), not one; choose a word "
                                   "the tokenizer has as a single piece")
    return ids[0]


def capped_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Cut the longest segments first until the total fits ``budget`` (water filling)."""
    if sum(lengths) <= budget:
        return list(lengths)
    remaining, order, cap = budget, sorted(range(len(lengths)), key=lambda i: lengths[i]), 0
    for n, i in enumerate(order):
        share = remaining // (len(order) - n)
        if lengths[i] > share:
            cap = share
            break
        remaining -= lengths[i]
    return [min(length, cap) for length in lengths]


class UniMCEncoder:
    """ChoiceItems -> UniMCSamples. ``encode`` maps text to ids without special tokens (a tokenizer's encode)."""

    def __init__(self, encode: Callable[[str], list[int]], cls_id: int, sep_id: int, mask_id: int, seq_length: int):
        self.encode, self.cls_id, self.sep_id, self.mask_id = encode, cls_id, sep_id, mask_id
        self.seq_length = seq_length
        self._cache: dict[str, list[int]] = {}  # passages repeat (MultiRC answers, the options of NLI tasks)

    @classmethod
    def from_tokenizer(cls, tokenizer, seq_length: int) -> "UniMCEncoder":
        return cls(tokenizer.encode, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, seq_length)

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.encode(text) if text else []
        return self._cache[text]

    def build(self, item: ChoiceItem) -> UniMCSample:
        options = [self.ids(o) for o in item.options]
        if not options:
            raise VegaInputError("options", f"a question without options: {item.question[:60]!r}")
        budget = self.seq_length - OPTION_RESERVE
        while sum(len(o) + 1 for o in options) > budget:
            if all(len(o) <= 1 for o in options):
                raise VegaInputError("--seq-length", f"{len(options)} options do not fit {self.seq_length} tokens")
            options = [o[:max(1, len(o) // 2)] for o in options]
        texts = [self.ids(t) for t in (item.question, item.passage, item.passage_b) if t]
        used = 1 + sum(len(o) + 1 for o in options) + 1  # [CLS], the option blocks, the closing [SEP]
        lengths = capped_lengths([len(t) for t in texts], self.seq_length - used - len(texts))
        tokens, positions, blocks, omask = [self.cls_id], [0], [0], []
        for k, option in enumerate(options):
            omask.append(len(tokens))
            tokens += [self.mask_id, *option]
            positions += range(1, len(option) + 2)
            blocks += [k + 1] * (len(option) + 1)
        text_start = len(tokens) + 1
        rest = [self.sep_id]
        for text, n in zip(texts, lengths):
            rest += text[:n] + [self.sep_id]
        after = max(len(o) for o in options) + 2  # one past the largest option position
        tokens += rest
        positions += range(after, after + len(rest))
        blocks += [0] * len(rest)
        label = NOT_LABELLED if item.label is None else item.label
        return UniMCSample(tuple(tokens), tuple(positions), tuple(blocks), tuple(omask), text_start, label)


@dataclass(frozen=True)
class TextMasking:
    """UniMC's auxiliary MLM on the text after the options: a per-example rate from RATES (with PROBS), then
    BERT's 80 / 10 / 10 on each chosen token."""
    mask_id: int
    vocab_size: int
    special: np.ndarray  # bool per id: never chosen, never drawn as a random replacement

    RATES = (0.0, 0.1, 0.2, 0.3)
    PROBS = (0.3, 0.3, 0.25, 0.15)

    def apply(self, tokens: list[int], start: int, rng: np.random.Generator) -> tuple[list[int], dict[int, int]]:
        """Masked tokens and {index: original id} of the chosen positions."""
        rate = rng.choice(self.RATES, p=self.PROBS)
        ids = np.asarray(tokens)
        candidates = np.flatnonzero(~self.special[ids[start:]]) + start
        chosen = candidates[rng.random(len(candidates)) < rate]
        targets = {int(i): int(ids[i]) for i in chosen}
        action = rng.random(len(chosen))
        regular = np.flatnonzero(~self.special)
        out = list(tokens)
        for i, a in zip(chosen, action):
            if a < 0.8:
                out[i] = self.mask_id
            elif a < 0.9:
                out[i] = int(regular[rng.integers(len(regular))])
        return out, targets


def collate(samples: Sequence[UniMCSample], pad_id: int, yes_id: int, no_id: int,
            masking: TextMasking | None = None, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest sample. ``omask`` [n, 2]: (row, index) of every O-MASK, options of a row in order;
    ``gold`` [b]: the index of the right O-MASK (NOT_LABELLED when unknown); ``lm_labels`` [b, s]: the MLM targets
    (yes / no at the O-MASKs of labelled rows, the original token at text positions ``masking`` chose)."""
    b, s = len(samples), max(len(x.tokens) for x in samples)
    tokens = torch.full((b, s), pad_id, dtype=torch.long)
    padding = torch.zeros((b, s), dtype=torch.long)
    positions, blocks = torch.zeros_like(tokens), torch.zeros_like(tokens)
    lm_labels = torch.full((b, s), NOT_LABELLED, dtype=torch.long)
    gold = torch.full((b,), NOT_LABELLED, dtype=torch.long)
    omask = []
    for r, x in enumerate(samples):
        ids = list(x.tokens)
        if masking is not None:
            ids, targets = masking.apply(ids, x.text_start, rng)
            for i, t in targets.items():
                lm_labels[r, i] = t
        n = len(ids)
        tokens[r, :n], padding[r, :n] = torch.tensor(ids), 1
        positions[r, :n], blocks[r, :n] = torch.tensor(x.position_ids), torch.tensor(x.block_ids)
        omask += [(r, m) for m in x.omask]
        if x.label != NOT_LABELLED:
            gold[r] = x.omask[x.label]
            for k, m in enumerate(x.omask):
                lm_labels[r, m] = yes_id if k == x.label else no_id
    return {"tokens": tokens, "padding_mask": padding, "position_ids": positions, "block_ids": blocks,
            "omask": torch.tensor(omask, dtype=torch.long), "gold": gold, "lm_labels": lm_labels}
