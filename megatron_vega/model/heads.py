"""Heads on the encoder's hidden states [s, b, H]: the pretraining heads a model is built with (``HeadSpec``,
the MLM head) and the task heads of SuperGLUE fine-tuning (docs/superglue_formats.md).

A pretraining head is attached to the last pipeline chunk by ``model.build.build_model(..., heads=...)``: the
objective names the heads it needs, the encoder itself has none. Its parameters are named ``<spec.name>.*``
(``lm_head.*`` for the MLM head, the names the HF mapping and existing checkpoints use). A head that ties its
output layer to the word embeddings reads them through ``model.shared_embedding_or_output_weight()``: the first
stage's embeddings, or the last stage's synced copy under pipeline parallelism.

The task heads below:

Fine-tuning runs without sequence parallelism, so the hidden states are replicated on tensor-parallel ranks and
the heads are small replicated modules: every TP rank computes the same outputs and gradients, and megatron-core
counts their grad norm once (parameters without the ``tensor_model_parallel`` tag count on TP rank 0 only).
Parameter names follow Hugging Face DebertaV2ForSequenceClassification (``pooler.dense``, ``classifier``) so
the HF converter can map the sequence heads. Every head returns logits [rows, classes].
"""
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from megatron_vega import runtime
from megatron_vega.config import ModelConfig
from megatron_vega.model.seeding import name_seeded_generator
from megatron_vega.ops.kernels import layer_norm

# Padded vocabulary entries get this logit: out of every softmax, yet finite (0 * logit stays 0 in soft-target CE).
PADDED_VOCAB_LOGIT = -1e30


@dataclass(frozen=True)
class HeadSpec:
    """A head of the last pipeline chunk. build(cfg, transformer_config) -> module, called as
    module(hidden [s(/tp), b, H], model, **head_inputs); ties_word_embeddings: the head reads the word embeddings
    (the last stage then holds a synced copy of them)."""
    name: str
    build: Callable
    ties_word_embeddings: bool = False


def sequence_gathered(hidden, sequence_parallel: bool):
    """The whole sequence [s, b, H] of a (possibly sequence-parallel) last-stage output. A head running replicated
    on TP ranks after copy_to_tensor_model_parallel_region already completes its input grad, so the gather's
    backward only splits (no reduce-scatter)."""
    if not sequence_parallel:
        return hidden
    return tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)


class LMFeatures(NamedTuple):
    """What the MLM head returns instead of logits when ``emit_features`` is set (a fused projection + loss takes
    it: ops/fused_linear_cross_entropy.py): the transformed hidden states [n, H] as the output projection reads them
    (through copy_to_tensor_model_parallel_region, whose backward all-reduces their gradient over TP), this rank's
    vocabulary shard of the output weight and bias, and the real vocabulary size (ids from it on are padding)."""
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    vocab_size: int


class MLMHead(torch.nn.Module):
    """dense -> GELU -> LN -> logits against the (tied) vocab-parallel word embeddings + a vocab-parallel bias
    (or, with ``emit_features``, the LMFeatures those logits come from)."""

    def __init__(self, cfg: ModelConfig, tp_size: int, sequence_parallel: bool = False):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.emit_features = False  # set by an objective whose loss projects the features itself
        self.vocab_size = cfg.vocab_size
        self.dense = torch.nn.Linear(cfg.hidden_size, cfg.hidden_size)
        torch.nn.init.normal_(self.dense.weight, mean=0.0, std=cfg.init_method_std)
        torch.nn.init.zeros_(self.dense.bias)
        self.layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon)
        per_rank = cfg.padded_vocab_size // tp_size
        self.bias = torch.nn.Parameter(torch.zeros(per_rank))
        tensor_parallel.set_tensor_model_parallel_attributes(self.bias, True, 0, 1)
        start = parallel_state.get_tensor_model_parallel_rank() * per_rank
        real = torch.arange(start, start + per_rank) < cfg.vocab_size
        self.register_buffer("vocab_pad", torch.where(real, 0.0, PADDED_VOCAB_LOGIT), persistent=False)

    def logits(self, hidden, output_weight):
        """hidden: [n, H] (replicated on TP ranks) -> fp32 logits over this rank's vocabulary shard [n, V/tp]."""
        h = self.layernorm(F.gelu(runtime.in_fp32(F.linear, hidden, self.dense.weight, self.dense.bias)))
        if self.emit_features:
            return LMFeatures(copy_to_tensor_model_parallel_region(h), output_weight, self.bias, self.vocab_size)
        logits = runtime.linear_in_fp32(copy_to_tensor_model_parallel_region(h), output_weight) + self.bias
        return logits.float() + self.vocab_pad

    def forward(self, hidden, model, lm_positions=None):
        """[s, b, V/tp] logits, or [n, V/tp] at the flat (s-major) ``lm_positions`` only."""
        hidden = sequence_gathered(hidden, self.sequence_parallel)
        s, b, h = hidden.shape
        weight = model.shared_embedding_or_output_weight()
        if lm_positions is None:
            out = self.logits(hidden.reshape(s * b, h), weight)
            return out if self.emit_features else out.view(s, b, -1)
        return self.logits(hidden.reshape(s * b, h).index_select(0, lm_positions), weight)


MLM_HEAD = HeadSpec("lm_head", lambda cfg, tc: MLMHead(cfg, tc.tensor_model_parallel_size, tc.sequence_parallel),
                    ties_word_embeddings=True)


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
