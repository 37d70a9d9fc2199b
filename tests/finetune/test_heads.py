"""Task heads: span pooling against a per-span loop, output shapes, name-seeded initialisation, SiFT's losses."""
import math

import pytest
import torch
import torch.nn.functional as F

from megatron_vega.finetune.sift import kl, symmetric_kl
from megatron_vega.model.heads import (
    MentionScoringHead,
    MultipleChoiceHead,
    SequenceClassificationHead,
    SpanPairHead,
    init_head,
    span_pool,
)


def test_span_pool_matches_a_loop_over_spans():
    torch.manual_seed(0)
    hidden = torch.randn(9, 3, 8, requires_grad=True)
    spans = torch.tensor([[0, 1, 4], [2, 5, 6], [2, 0, 9], [1, 3, 5]])
    expected = []
    for seq, start, end in spans.tolist():
        states = hidden[:, seq]
        weights = (states[start:end] @ states[0] / math.sqrt(8)).softmax(0)
        expected.append(weights @ states[start:end])
    torch.testing.assert_close(span_pool(hidden, spans), torch.stack(expected))
    span_pool(hidden, spans).sum().backward()
    assert hidden.grad[:, 0].abs().sum() > 0


def test_head_shapes():
    hidden = torch.randn(7, 4, 16)
    pair_spans = torch.tensor([[i, 1, 3] for i in range(4) for _ in range(2)])
    assert SequenceClassificationHead(16, 3, 0.0)(hidden, {}).shape == (4, 3)
    assert MultipleChoiceHead(16, 2, 0.0)(hidden, {}).shape == (2, 2)
    assert SpanPairHead(16, 2, 0.0)(hidden, {"spans": pair_spans}).shape == (4, 2)
    mentions = MentionScoringHead(16, 0.0)(hidden, {"spans": pair_spans[:5]})
    assert mentions.shape == (5, 2) and (mentions[:, 0] == 0).all()


def test_hf_names_and_name_seeded_init():
    head = SequenceClassificationHead(16, 2, 0.1)
    assert [n for n, _ in head.named_parameters()] == ["pooler.dense.weight", "pooler.dense.bias",
                                                        "classifier.weight", "classifier.bias"]
    other = SequenceClassificationHead(16, 2, 0.1)
    torch.manual_seed(1)
    init_head(head, 0.02, seed=5)
    torch.manual_seed(2)
    init_head(other, 0.02, seed=5)
    for (name, p), q in zip(head.named_parameters(), other.parameters()):
        assert torch.equal(p, q), name
    assert head.classifier.bias.abs().sum() == 0 and head.classifier.weight.std().item() == pytest.approx(0.02, rel=0.5)


def test_symmetric_kl_is_two_cross_entropies_with_stop_gradient_weights():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    p, q = a.softmax(-1), b.softmax(-1)
    entropy = lambda r: -(r * r.log()).sum(-1)  # noqa: E731
    kl_qp = F.kl_div(a.log_softmax(-1), q.detach(), reduction="none").sum(-1)  # KL(sg(q) || p)
    kl_pq = F.kl_div(b.log_softmax(-1), p.detach(), reduction="none").sum(-1)  # KL(sg(p) || q)
    torch.testing.assert_close(symmetric_kl(a, b), kl_qp + kl_pq + entropy(p) + entropy(q))
    grads = torch.autograd.grad(symmetric_kl(a, b).sum(), (a, b))
    expected = torch.autograd.grad((kl_qp + kl_pq).sum(), (a, b))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    assert kl(a, b).shape == (5,)
