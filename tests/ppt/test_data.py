"""PPT's data builder follows its documented construction (docs/unimc_and_ppt.md, "PPT"): label shares, where each
second sentence / option comes from, the layouts, determinism, document-level dev split, sentence cutting."""
import json
from collections import Counter

import numpy as np
import pytest

from megatron_vega.errors import VegaInputError
from megatron_vega.ppt import data

CLS, SEP, MASK = 1, 2, 3
VOCAB = data.Vocab(CLS, SEP, MASK, label_ids=tuple(range(40, 57)), question=(8,), period=(9,), correct=(10, 11))
NSP_VOCAB = data.Vocab(CLS, SEP, MASK, label_ids=(40, 41, 42))


def corpus(n_docs=40, seed=0):
    """Documents whose sentences name themselves: sentence j of document d = [1000 + d, 2000 + j, 7, 7, (7...)]."""
    rng = np.random.default_rng(seed)
    return [[[1000 + d, 2000 + j] + [7] * int(rng.integers(3, 8)) for j in range(int(rng.integers(5, 12)))]
            for d in range(n_docs)]


def where(sentence):
    return sentence[0] - 1000, sentence[1] - 2000


def test_nsp3_thirds_and_sources():
    docs = corpus()
    examples = data.build_examples("nsp3", docs, NSP_VOCAB, 64, seed=5, stream=1)
    assert len(examples) == sum(map(len, docs))  # one per sentence (no pair fails the length ratio here)
    shares = data.label_distribution(examples)
    assert all(abs(shares[k] - 1 / 3) < 0.05 for k in range(3)), shares
    for e in examples:
        assert e.tokens[0] == CLS and e.tokens[-1] == SEP and e.tokens[e.slot] == MASK and e.num_classes == 3
        (d1, i1), (d2, i2) = where(e.tokens[1:]), where(e.tokens[e.slot + 1:])
        expected = 0 if d1 != d2 else 2 if abs(i1 - i2) == 1 else 1
        assert e.label == expected and (d1, i1) != (d2, i2)
    again = data.build_examples("nsp3", docs, NSP_VOCAB, 64, seed=5, stream=1)
    assert again == examples and data.build_examples("nsp3", docs, NSP_VOCAB, 64, seed=6, stream=1) != examples


def test_nsp3_truncates_around_the_slot():
    first, second = [1000, 2000] + [5] * 40, [1001, 2001] + [6] * 40
    e = data.nsp_example(NSP_VOCAB, first, second, 2, budget=23)
    assert len(e.tokens) == 23 and e.tokens[e.slot] == MASK
    assert e.tokens[1:e.slot] == tuple(first[-10:]) and e.tokens[e.slot + 1:-1] == tuple(second[:10])


def test_nss_layout_and_sources():
    docs = corpus()
    examples = data.build_examples("nss", docs, VOCAB, 512, seed=1, stream=1)
    answers = Counter()
    for e in examples:
        t = list(e.tokens)
        assert e.num_classes == 6 and t[e.slot] == MASK and t[e.slot - 3:e.slot] == [8, 10, 11]
        starts = [t.index(VOCAB.label_ids[k]) for k in range(6)]  # "A . option ." blocks in letter order
        assert starts == sorted(starts) and all(t[s + 1] == 9 for s in starts)
        query, options = where(t[1:]), [where(t[s + 2:]) for s in starts]
        sources = Counter("adjacent" if d == query[0] and abs(i - query[1]) == 1 else
                          "same" if d == query[0] else "other" for d, i in options)
        assert sources == {"adjacent": 1, "same": 1, "other": 4}
        assert len({d for d, _ in options if d != query[0]}) == 4  # four different other documents
        gold = options[e.label]
        assert gold[0] == query[0] and abs(gold[1] - query[1]) == 1
        answers[e.label] += 1
    assert max(answers.values()) / len(examples) < 1 / 6 + 0.06  # shuffled: the answer's letter is uniform


def test_unified_option_counts():
    docs = corpus(200)
    examples = data.build_examples("unified", docs, VOCAB, 1024, seed=2, stream=1)
    per_doc = Counter()
    for e in examples:
        assert 2 <= e.num_classes <= 16 and 0 <= e.label < e.num_classes
        assert sum(tok in VOCAB.label_ids for tok in e.tokens) == e.num_classes
        per_doc[e.num_classes] += 1
    assert set(per_doc) == set(range(2, 17))
    assert data.unified_plan(2) == (1, [0, 0, 0, 0], 400, 50) and data.unified_plan(16) == (3, [3, 3, 3, 3], 150, 20)


def test_dev_split_is_by_document_and_sentences_are_cut():
    docs = corpus(30)
    train, dev = data.split_documents(docs, 0.1, seed=3)
    assert len(dev) == 3 and len(train) == 27 and not {id(d) for d in dev} & {id(d) for d in train}
    with pytest.raises(VegaInputError, match="at least 5 usable documents"):
        data.build_examples("nss", dev, VOCAB, 512, seed=3, stream=2)
    ends = np.zeros(10, dtype=bool)
    ends[9] = True
    assert data.id_documents([[4, 5, 9, 6, 9, 7]], ends) == [[[4, 5, 9], [6, 9], [7]]]
    assert data.split_sentences("One two. Three? Four!\nFive") == ["One two.", "Three?", "Four!", "Five"]
    assert data.usable([[[1] * 5] * 5, [[1] * 4] * 9], 5, 5) == [[[1] * 5] * 5]


def test_single_keeps_confident_pseudo_labels(tmp_path):
    records = [{"text": "a", "label": 0, "prob": 0.9}, {"text": "b", "label": 0, "prob": 0.99},
               {"text": "c", "label": 4, "prob": 0.75}, {"text": "d", "label": 2, "prob": 0.4},
               {"text": "e", "label": 3}]
    path = tmp_path / "pseudo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    v = data.Vocab(CLS, SEP, MASK, label_ids=(40, 41, 42, 43, 44))
    out = data.single_examples(str(path), lambda text: [ord(text)], v, 64, data.SINGLE_THRESHOLDS)
    assert [(e.tokens, e.slot, e.label) for e in out] == [((CLS, ord("b"), MASK, SEP), 2, 0),
                                                          ((CLS, ord("c"), MASK, SEP), 2, 4),
                                                          ((CLS, ord("e"), MASK, SEP), 2, 3)]
