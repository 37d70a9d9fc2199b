"""PPT's self-supervised prompt pre-training data (docs/unimc_and_ppt.md, "PPT"), built from unlabelled text.

Documents are lists of sentences, each a list of token ids (no special tokens). Every task makes one example per
usable sentence s_i of a document; the label is read by the MLM head at a [MASK] slot (the encoder's stand-in for
PPT's T5 sentinel):

* ``nsp3``  [CLS] s_i [MASK] s2 [SEP]; s2 is, with probability 1/3 each, a sentence of another document (class 0,
  "no"), a sentence of the same document not adjacent to s_i ("maybe"), or an adjacent one, i+1 or i-1 with
  probability 1/2 each, forced at the document's edges ("yes").
* ``nss``   [CLS] s_i ? A . o_1 . B . o_2 . ... F . o_6 . ? The correct one is [MASK] [SEP]; the options are an
  adjacent sentence (the answer), a same-document non-adjacent one and one sentence from each of four other
  documents, shuffled; the label is the answer's letter.
* ``unified`` as ``nss`` with n ~ U{2..16} options per document (``unified_plan``).
* ``single`` [CLS] text [MASK] [SEP] over pseudo-labelled records (``single_examples``), 5 sentiment words.

Everything is drawn from ``numpy.random.default_rng((seed, stream))``: the same seed gives the same examples on
every rank and in every run. Documents are split into train and dev before anything is drawn, so the dev
accuracy is measured on sentences (and negatives) of documents the prompt never saw.
"""
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_vega.data import text_input
from megatron_vega.errors import VegaInputError
from megatron_vega.superglue.readers import read_jsonl_records
from megatron_vega.unimc.layout import capped_lengths

TASKS = ("nsp3", "nss", "unified", "single")
NSP_WORDS = ("no", "maybe", "yes")  # class order: other document, same document not adjacent, adjacent
SINGLE_WORDS = ("terrible", "bad", "maybe", "good", "great")
OPTION_LETTERS = tuple("ABCDEFGHIJKLMNOPQ")  # PPT's letter map: 17 letters
SINGLE_THRESHOLDS = (0.95, 0.5, 0.5, 0.5, 0.7)  # PPT keeps a pseudo-label only above its class's confidence
NSS_QUERY_CAP, NSS_OPTION_CAP = 389, 86  # PPT's NSS truncation (tokens)
LENGTH_RATIO = (0.01, 100.0)  # NSP pairs whose length ratio falls outside are skipped
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@dataclass(frozen=True)
class PPTExample:
    tokens: tuple[int, ...]  # [CLS] ... [MASK] ... [SEP], no prompt
    slot: int                # index of the [MASK] whose MLM logits give the answer
    label: int               # class index: the answer is label_ids[label]
    num_classes: int         # the first num_classes label ids are this example's candidates


@dataclass(frozen=True)
class Vocab:
    """The ids the layouts need: specials, template pieces and one id per label word (checked single pieces)."""
    cls_id: int
    sep_id: int
    mask_id: int
    label_ids: tuple[int, ...]
    question: tuple[int, ...] = ()  # "?"
    period: tuple[int, ...] = ()    # "."
    correct: tuple[int, ...] = ()   # "The correct one is"


# -- documents ---------------------------------------------------------------------------------------------------
def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.replace("\n", " ")) if s.strip()]


def text_documents(path: str, encode, json_keys: tuple[str, ...] = ("text",)) -> list[list[list[int]]]:
    """Plain text (a document per paragraph) or JSONL (a document per line), as the data tools read them."""
    text_input.check_input_file(path)
    docs = []
    for first_line, chunk in text_input.iter_raw_chunks(path):
        for line_no, raw in text_input.split_documents(first_line, chunk, text_input.is_jsonl(path)):
            text = text_input.decode_document(path, line_no, raw, json_keys)
            docs.append([encode(s) for s in split_sentences(text)])
    return docs


def id_documents(documents, ends_sentence: np.ndarray) -> list[list[list[int]]]:
    """Token-id documents (an indexed dataset's) cut after every id that ``ends_sentence`` marks."""
    docs = []
    for ids in documents:
        ids = np.asarray(ids)
        cuts = np.flatnonzero(ends_sentence[ids]) + 1
        docs.append([piece.tolist() for piece in np.split(ids, cuts) if len(piece)])
    return docs


def sentence_end_ids(tokenizer) -> np.ndarray:
    """Bool per id: the piece ends a sentence (its text ends with . ! or ?)."""
    ends = np.zeros(tokenizer.vocab_size, dtype=bool)
    for i in range(tokenizer.vocab_size):
        if not tokenizer.is_special[i]:
            ends[i] = tokenizer.id_to_piece(i).rstrip("\"')]").endswith((".", "!", "?"))
    return ends


def usable(docs, min_sentences: int, min_tokens: int) -> list[list[list[int]]]:
    """Sentences of at least ``min_tokens`` tokens; documents left with at least ``min_sentences`` of them."""
    kept = ([s for s in doc if len(s) >= min_tokens] for doc in docs)
    return [doc for doc in kept if len(doc) >= min_sentences]


def split_documents(docs, dev_fraction: float, seed: int) -> tuple[list, list]:
    """(train, dev) documents: a seeded shuffle, dev = the first round(fraction * n) (at least one if asked)."""
    order = np.random.default_rng((seed, 0)).permutation(len(docs))
    n_dev = max(1, round(dev_fraction * len(docs))) if dev_fraction > 0 else 0
    return [docs[i] for i in order[n_dev:]], [docs[i] for i in order[:n_dev]]


# -- drawing -----------------------------------------------------------------------------------------------------
def _adjacent(rng, i: int, n: int) -> int:
    if i == 0:
        return 1
    if i == n - 1:
        return i - 1
    return i + 1 if rng.random() < 0.5 else i - 1


def _far(rng, i: int, n: int, k: int = 1) -> list[int]:
    """k distinct indices of the document not in {i-1, i, i+1} (fewer if the document is short)."""
    pool = [j for j in range(n) if abs(j - i) > 1]
    return [pool[j] for j in rng.permutation(len(pool))[:k]]


def _other_documents(rng, docs, d: int, k: int) -> list[int]:
    others = rng.choice(len(docs) - 1, size=k, replace=False)
    return [int(o) + (o >= d) for o in others]  # skip document d


def _from(rng, doc) -> list[int]:
    return doc[int(rng.integers(len(doc)))]


# -- layouts -----------------------------------------------------------------------------------------------------
def nsp_example(v: Vocab, first: list[int], second: list[int], label: int, budget: int) -> PPTExample:
    """[CLS] first [MASK] second [SEP], cut in proportion to the two lengths around the slot: the end of the
    first sentence and the start of the second stay."""
    room = budget - 3
    total = len(first) + len(second)
    if total > room:
        keep_first = max(1, round(room * len(first) / total))
        first, second = first[len(first) - keep_first:], second[:room - keep_first]
    tokens = [v.cls_id, *first, v.mask_id, *second, v.sep_id]
    return PPTExample(tuple(tokens), len(first) + 1, label, len(v.label_ids))


def choice_example(v: Vocab, query: list[int], options: Sequence[list[int]], label: int, budget: int,
                   query_cap: int, option_cap: int) -> PPTExample:
    """[CLS] query ? A . o_1 . B . o_2 . ... ? The correct one is [MASK] [SEP] (PPT's NSS template)."""
    fixed = 3 + 2 * len(v.question) + len(v.correct) + len(options) * (1 + 2 * len(v.period))
    lengths = [min(len(query), query_cap)] + [min(len(o), option_cap) for o in options]
    lengths = capped_lengths(lengths, budget - fixed)
    if min(lengths) < 1:
        raise VegaInputError("--seq-length", f"{budget} tokens cannot hold a query and {len(options)} options")
    tokens = [v.cls_id, *query[:lengths[0]], *v.question]
    for k, (option, n) in enumerate(zip(options, lengths[1:])):
        tokens += [v.label_ids[k], *v.period, *option[:n], *v.period]
    tokens += [*v.question, *v.correct]
    slot = len(tokens)
    return PPTExample(tuple(tokens + [v.mask_id, v.sep_id]), slot, label, len(options))


def nsp3_examples(docs, v: Vocab, budget: int, rng) -> list[PPTExample]:
    out = []
    for d, doc in enumerate(docs):
        for i, sentence in enumerate(doc):
            r = rng.random()
            if r < 1 / 3:
                label, second = 0, _from(rng, docs[_other_documents(rng, docs, d, 1)[0]])
            elif r < 2 / 3:
                label, second = 1, doc[_far(rng, i, len(doc))[0]]
            else:
                label, second = 2, doc[_adjacent(rng, i, len(doc))]
            if LENGTH_RATIO[0] <= len(sentence) / len(second) <= LENGTH_RATIO[1]:
                out.append(nsp_example(v, sentence, second, label, budget))
    return out


def unified_plan(n: int) -> tuple[int, list[int], int, int]:
    """For n options: (same-document negatives, negatives per other document (4 documents), query cap, option
    cap). PPT keeps a per-n table (1-3 same-document negatives, 0-3 from each of 4 other documents, query 400 ->
    150 and options 50 -> 20 tokens as n grows); its values are not in the spec, so this interpolates linearly."""
    same = min(n - 1, 1 + (n - 2) // 7)
    others = n - 1 - same
    per_doc = [others // 4 + (k < others % 4) for k in range(4)]
    step = (n - 2) / 14
    return same, per_doc, round(400 - 250 * step), round(50 - 30 * step)


def choice_examples(docs, v: Vocab, budget: int, rng, num_options: int | None) -> list[PPTExample]:
    """NSS (``num_options`` = 6: 1 same-document, 4 other-document negatives) or unified (None: n per document)."""
    out = []
    for d, doc in enumerate(docs):
        if num_options is None:
            n = int(rng.integers(2, 17))
            same, per_doc, query_cap, option_cap = unified_plan(n)
        else:
            n, same, per_doc, query_cap, option_cap = num_options, 1, [1] * (num_options - 2), NSS_QUERY_CAP, \
                NSS_OPTION_CAP
        for i, sentence in enumerate(doc):
            options = [doc[_adjacent(rng, i, len(doc))]] + [doc[j] for j in _far(rng, i, len(doc), same)]
            for other, k in zip(_other_documents(rng, docs, d, len(per_doc)), per_doc):
                options += [docs[other][j] for j in rng.permutation(len(docs[other]))[:k]]
            order = rng.permutation(len(options))
            shuffled = [options[j] for j in order]
            out.append(choice_example(v, sentence, shuffled, int(np.flatnonzero(order == 0)[0]), budget, query_cap,
                                      option_cap))
    return out


def build_examples(task: str, docs, v: Vocab, budget: int, seed: int, stream: int,
                   num_options: int = 6) -> list[PPTExample]:
    """The examples of one split (``stream`` 1 train, 2 dev) of ``docs`` for ``task`` (not ``single``)."""
    need = 5 if task in ("nss", "unified") else 2
    if len(docs) < need:
        raise VegaInputError("--ppt-dev-fraction", f"{task} draws negatives from other documents and needs at least "
                                                   f"{need} usable documents per split, this one has {len(docs)}")
    rng = np.random.default_rng((seed, stream))
    if task == "nsp3":
        return nsp3_examples(docs, v, budget, rng)
    return choice_examples(docs, v, budget, rng, num_options if task == "nss" else None)


def single_examples(path: str, encode, v: Vocab, budget: int, thresholds: Sequence[float]) -> list[PPTExample]:
    """[CLS] text [MASK] [SEP] from pseudo-labelled JSONL ``{"text", "label": 0..K-1, "prob"}`` (a classifier's
    output); a record is kept when its prob exceeds its label's threshold (records without prob are kept)."""
    out = []
    for line in read_jsonl_records(path):
        rec, where = line.obj, line.where
        try:
            text, label, prob = str(rec["text"]), rec["label"], float(rec.get("prob", 1.0))
        except (ValueError, KeyError, TypeError):
            raise VegaInputError(where, 'expected {"text": str, "label": int, "prob": float}') from None
        if not (isinstance(label, int) and 0 <= label < len(v.label_ids)):
            raise VegaInputError(where, f'"label" must be an int in [0, {len(v.label_ids)})')
        if prob > thresholds[label] or "prob" not in rec:
            ids = encode(text)[:budget - 3]
            out.append(PPTExample((v.cls_id, *ids, v.mask_id, v.sep_id), len(ids) + 1, label, len(v.label_ids)))
    if not out:
        raise VegaInputError(path, "no record passes the confidence thresholds")
    return out


def label_distribution(examples: Sequence[PPTExample]) -> dict[int, float]:
    counts = np.bincount([e.label for e in examples], minlength=1)
    return {k: round(float(c) / max(len(examples), 1), 4) for k, c in enumerate(counts)}
