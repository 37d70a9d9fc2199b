"""Task heads on the encoder's hidden states [s, b, H], for SuperGLUE fine-tuning (docs/superglue_formats.md).

Fine-tuning runs without sequence parallelism, so the hidden states are replicated on tensor-parallel ranks and
the heads are small replicated modules: every TP rank computes the same outputs and gradients, and megatron-core
counts their grad norm once (parameters without the ``tensor_model_parallel`` tag count on TP rank 0 only).
Parameter names follow Hugging Face DebertaV2ForSequenceClassification (``pooler.dense``, ``classifier``) so
the HF converter can map the sequence heads. Every head returns logits [rows, classes].
"""
import math

import torch
import torch.nn.functional as F

from megatron_vega.model.seeding import name_seeded_generator


class ContextPooler(torch.nn.Module):
    """HF's ContextPooler: dropout -> dense -> GELU, on the [CLS] state (or on a pooled span)."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.dense = torch.nn.Linear(hidden, hidden)

    def forward(self, states):
        return F.gelu(self.dense(self.dropout(states)))


class SequenceClassificationHead(torch.nn.Module):
    """[CLS] -> pooler -> dropout -> classifier: BoolQ, CB, RTE (and AX), MultiRC per answer option."""

    def __init__(self, hidden: int, num_labels: int, dropout: float):
        super().__init__()
        self.pooler = ContextPooler(hidden, dropout)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden, num_labels)

    def forward(self, hidden, batch):
        return self.classifier(self.dropout(self.pooler(hidden[0])))


class MultipleChoiceHead(SequenceClassificationHead):
    """COPA: one score per (premise, option) sequence, the options of a question side by side for a softmax
    (HF DebertaV2ForMultipleChoice)."""

    def __init__(self, hidden: int, num_choices: int, dropout: float):
        super().__init__(hidden, 1, dropout)
        self.num_choices = num_choices

    def forward(self, hidden, batch):
        return super().forward(hidden, batch).view(-1, self.num_choices)


def span_pool(hidden, spans):
    """Each span's token states, attention-pooled with weights softmax(h_tok . h_CLS / sqrt(H)) over the span
    (DeBERTa's ReCoRD span representation). hidden [s, b, H]; spans [m, 3] rows (sequence, start, end) -> [m, H].
    Written as one [m, b*s] x [b*s, H] product so no [m, s, H] copy of the states is made."""
    s, b, h = hidden.shape
    states = hidden.transpose(0, 1)  # [b, s, H]
    scores = torch.einsum("bsh,bh->bs", states, states[:, 0]).float() / math.sqrt(h)
    seq, start, end = spans.unbind(1)
    pos = torch.arange(s, device=hidden.device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])  # [m, s]
    weights = scores[seq].masked_fill(~inside, float("-inf")).softmax(-1).to(hidden.dtype)
    weights = weights[:, None, :] * F.one_hot(seq, b).to(hidden.dtype)[:, :, None]  # [m, b, s]
    return weights.reshape(len(spans), b * s) @ states.reshape(b * s, h)


class SpanPairHead(torch.nn.Module):
    """WiC, WSC: [pooled CLS ; span 1 ; span 2] -> dropout -> classifier (jiant's span-comparison head plus the
    sentence context). Rows 2i and 2i+1 of ``batch["spans"]`` are the two spans of sequence i."""

    def __init__(self, hidden: int, num_labels: int, dropout: float):
        super().__init__()
        self.pooler = ContextPooler(hidden, dropout)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(3 * hidden, num_labels)

    def forward(self, hidden, batch):
        spans = span_pool(hidden, batch["spans"]).view(-1, 2 * hidden.shape[-1])
        return self.classifier(self.dropout(torch.cat([self.pooler(hidden[0]), spans], dim=-1)))


class MentionScoringHead(torch.nn.Module):
    """ReCoRD (DeBERTa's ReCoRDQAModel): each entity mention's pooled span -> dense -> GELU -> dropout -> one
    logit s, returned as the row (0, s) so that softmax cross-entropy over it is the binary cross-entropy."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.pooler = ContextPooler(hidden, dropout)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden, 1)

    def forward(self, hidden, batch):
        score = self.classifier(self.dropout(self.pooler(span_pool(hidden, batch["spans"]))))
        return torch.cat([torch.zeros_like(score), score], dim=-1)


@torch.no_grad()
def init_head(head: torch.nn.Module, std: float, seed: int) -> None:
    """Normal(0, std) weights drawn from (seed, parameter name) alone, zero biases: the same head on every rank
    and every layout, whatever else consumed the default RNG."""
    for name, p in head.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=name_seeded_generator(seed, name)) * std)
