"""GLM's span sampling and Part A / Part B layout (data/glm_blanks.py), against the toy example of
docs/glm_and_cloze.md and by the properties the sampling promises."""
import numpy as np
import pytest
import torch

from megatron_vega.data.glm_blanks import (
    GLMSpecialIds,
    SpanSettings,
    document_span,
    glm_layout,
    glm_special_ids,
    sentence_spans,
    span_length_weights,
    token_spans,
)
from megatron_vega.data.tokenizer import SyntheticVocab
from megatron_vega.model.attention_inputs import AttentionInputs

IDS = GLMSpecialIds(mask=4, sop=96, eop=97, smask=98, gmask=99, pad=0)
X1, X2, X3, X4, X5, X6 = range(11, 17)
M, S, E = IDS.mask, IDS.sop, IDS.eop


def test_toy_example_ids_positions_and_mask():
    """x1..x6 with spans {x3} and {x5 x6}, Part B ordered (x5 x6), (x3): the table of the method's toy example."""
    sample = glm_layout(np.array([X1, X2, X3, X4, X5, X6]), [(2, 3), (4, 6)], [M, M], [1, 0], IDS)
    assert sample["tokens"].tolist() == [X1, X2, M, X4, M, S, X5, X6, S, X3]
    pad = IDS.pad  # no target on Part A
    assert sample["labels"].tolist() == [pad] * 5 + [X5, X6, E, X3, E]
    assert sample["loss_mask"].tolist() == [0] * 5 + [1] * 5
    assert sample["position_ids"].tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 2, 2]
    assert sample["block_position_ids"].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
    assert int(sample["prefix_lengths"]) == 5

    attention = AttentionInputs(torch.ones(1, 10, dtype=torch.long),
                                prefix_lengths=torch.tensor([5]),
                                position_ids=torch.from_numpy(sample["position_ids"])[None])
    expected = torch.tril(torch.ones(10, 10, dtype=torch.bool))
    expected[:, :5] = True  # columns 0-4 (Part A) open to every query
    assert torch.equal(attention.allowed()[0], expected)
    # relative-position equivalent: the relative distances the encoder buckets are pos1_i - pos1_j
    pos1 = attention.position_ids[0]
    relative = pos1[:, None] - pos1[None, :]
    assert relative[5:8, 4].tolist() == [0, 0, 0]  # span (x5 x6) sits at its blank, position 4
    assert relative[8, 2].item() == 0 and relative[9, 0].item() == 2
    index = attention.relative_index(buckets=32, max_position=512, span=32)[0]
    assert torch.equal(index[6], index[4])  # x5 (Part B) sees the text exactly as its blank does


def test_padding_and_sequence_budget():
    sample = glm_layout(np.array([X1, X2, X3]), [(1, 2)], [M], [0], IDS, seq_length=8)
    assert sample["tokens"].tolist() == [X1, M, X3, S, X2, 0, 0, 0]
    assert sample["padding_mask"].tolist() == [1] * 5 + [0] * 3
    with pytest.raises(ValueError, match="needs 5 positions"):
        glm_layout(np.array([X1, X2, X3]), [(1, 2)], [M], [0], IDS, seq_length=4)


def test_token_spans_cover_fifteen_percent_apart_and_poisson_lengths():
    rng = np.random.default_rng(0)
    settings = SpanSettings()
    lengths = []
    for _ in range(300):
        spans = token_spans(1, 201, room=60, settings=settings, rng=rng)
        assert sum(b - a for a, b in spans) >= 30  # 15 % of 200 tokens
        assert all(1 <= a < b <= 201 for a, b in spans)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # a free token between spans
        lengths += [b - a for a, b in spans]
    weights = span_length_weights(3.0, 39)
    expected_mean = (np.arange(1, 40) * weights).sum()  # ≈ 3.16 (truncation at 1..39)
    # the last span of a sample is biased long (it stops the draw), so compare loosely
    assert abs(np.mean(lengths) - expected_mean) < 0.35
    assert abs(weights.sum() - 1) < 1e-12 and weights.argmax() in (1, 2)  # modes of Poisson(3): 2 and 3


def test_token_spans_respect_the_room_left_in_the_sequence():
    spans = token_spans(1, 201, room=4, settings=SpanSettings(), rng=np.random.default_rng(1))
    assert len(spans) <= 2


def test_sentence_and_document_spans():
    ends = np.zeros(100, dtype=bool)
    ends[50] = True  # token 50 ends a sentence
    tokens = np.array([1, 20, 21, 50, 22, 23, 24, 50, 25, 26, 2])
    spans = sentence_spans(tokens, 1, 10, room=20, sentence_end=ends, settings=SpanSettings(),
                           rng=np.random.default_rng(0))
    assert spans and set(spans) <= {(1, 4), (4, 8), (8, 10)}
    settings = SpanSettings(gpt_infill_prob=0.0)
    for seed in range(20):
        ((start, stop),) = document_span(1, 101, settings, np.random.default_rng(seed))
        assert stop == 101 and 50 <= stop - start <= 100  # the suffix, half to all of the text


def test_special_ids_sit_at_the_top_of_the_model_vocabulary():
    ids = glm_special_ids(1006, SyntheticVocab(1002))
    assert (ids.sop, ids.eop, ids.smask, ids.gmask) == (1002, 1003, 1004, 1005) and ids.mask == 4
