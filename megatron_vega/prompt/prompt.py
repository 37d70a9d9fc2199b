"""Continuous prompts on a frozen Vega encoder: shallow (input vectors) and deep (per-layer prefix keys/values).

The prompt's parameters are small and replicated on tensor-parallel ranks. A deep prompt is produced whole,
[P, L, 2, heads, d], and each rank slices its own heads after ``copy_to_tensor_model_parallel_region``, whose
backward all-reduces: every rank ends with the full, identical gradient (the pattern of the relative table).
A shallow prompt is a replicated input of the first column-parallel layer, whose backward already all-reduces.
So the prompt trains like any replicated parameter and is saved as one layout-independent file.

Deep prefixes go to the encoder in its AttentionInputs; they have no position, so their relative-position bias is
zero (docs/attention.md). Shallow prompts sit after [CLS] so the heads still read [CLS] at position 0; token spans
move right by the prompt length.
"""
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.seeding import name_seeded_generator


class PromptEncoder(torch.nn.Module):
    """P prompt vectors of width ``out_dim``: a free table (none), or a [P, H] table reparameterised by an MLP
    (P-tuning v2's prefix projection) or a bi-LSTM + MLP (P-tuning)."""

    def __init__(self, length: int, hidden: int, out_dim: int, kind: str, mlp_hidden: int):
        super().__init__()
        self.kind = kind
        self.embedding = torch.nn.Parameter(torch.empty(length, out_dim if kind == "none" else hidden))
        if kind == "lstm":
            self.lstm = torch.nn.LSTM(hidden, hidden // 2, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, out_dim))
        elif kind == "mlp":
            self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, mlp_hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(mlp_hidden, out_dim))

    def forward(self):
        x = self.embedding
        if self.kind == "lstm":
            x = self.lstm(x[None])[0][0]
        return x if self.kind == "none" else self.mlp(x)

    @torch.no_grad()
    def reset_parameters(self, seed: int, table: torch.Tensor | None = None) -> None:
        """Seeded from (seed, parameter name) alone, so identical on every rank and layout: the table N(0, 1)
        (or ``table``), encoder weights U(+-1/sqrt(fan_in)) as PyTorch's defaults, biases zero."""
        for name, p in self.named_parameters():
            gen = name_seeded_generator(seed, name)
            if name == "embedding":
                p.copy_(torch.randn(p.shape, generator=gen) if table is None else table)
            elif "bias" in name:
                p.zero_()
            else:
                bound = 1.0 / math.sqrt(p.shape[-1])
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)


class Prompt(torch.nn.Module):
    """A task's prompt: ``forward(encoder, batch)`` -> (hidden [s, b, H], batch as the head must read it)."""

    def __init__(self, structure: dict, model_cfg):
        super().__init__()
        self.structure = dict(structure)  # type, length, encoder, hidden_size, dropout: saved with the weights
        self.deep = structure["type"] == "deep"
        self.length = structure["length"]
        self.dropout = structure["dropout"]
        self.layers, self.heads, self.head_dim = (model_cfg.num_layers, model_cfg.num_attention_heads,
                                                  model_cfg.kv_channels)
        out_dim = 2 * self.layers * self.heads * self.head_dim if self.deep else model_cfg.hidden_size
        self.encoder = PromptEncoder(self.length, model_cfg.hidden_size, out_dim, structure["encoder"],
                                     structure["hidden_size"])

    def forward(self, encoder, batch):
        tokens, mask = batch["tokens"], batch["padding_mask"]
        vectors = self.encoder()
        if self.deep:
            attention = AttentionInputs.from_batch(batch, prefix=self.prefix(vectors, tokens.shape[0]))
            return encoder(tokens, attention), batch
        b = tokens.shape[0]
        prompt = vectors[:, None, :].expand(self.length, b, -1)

        def after_cls(words, tokens):  # [s, b, H] -> [s + P, b, H]
            return torch.cat([words[:1], prompt.to(words.dtype), words[1:]], dim=0)

        mask = torch.cat([mask[:, :1], mask.new_ones(b, self.length), mask[:, 1:]], dim=1)
        # the prompt lengthens the sequence: masks or positions given for the batch's tokens would not fit it
        if any(batch.get(key) is not None for key in AttentionInputs.BATCH_KEYS):
            raise NotImplementedError("a shallow prompt with attention masks or position ids")
        with encoder.embedding_hook(after_cls):
            hidden = encoder(tokens, AttentionInputs(mask))
        batch = {**batch, "padding_mask": mask}
        if "spans" in batch:  # (sequence, start, end); a span truncated away points at [CLS] and stays there
            spans = batch["spans"].clone()
            spans[:, 1:] += self.length * (spans[:, 1:2] > 0)
            batch["spans"] = spans
        return hidden, batch

    def prefix(self, vectors, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[P, L*2*heads*d] -> per layer (keys, values) of this rank's heads, each [b, heads/tp, P, d]."""
        vectors = F.dropout(vectors, self.dropout, self.training)  # replicated: the default RNG, same on TP ranks
        full = copy_to_tensor_model_parallel_region(vectors).view(
            self.length, self.layers, 2, self.heads, self.head_dim)
        tp, rank = (parallel_state.get_tensor_model_parallel_world_size(),
                    parallel_state.get_tensor_model_parallel_rank())
        local = full.chunk(tp, dim=3)[rank].permute(1, 2, 3, 0, 4)  # [L, 2, heads/tp, P, d]
        return [(layer[0].expand(batch_size, -1, -1, -1), layer[1].expand(batch_size, -1, -1, -1))
                for layer in local]
