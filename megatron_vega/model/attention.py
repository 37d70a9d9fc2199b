"""Disentangled self-attention (DeBERTa-v2): the projections and the paper's math, heads split across
tensor-parallel ranks. The softmax part runs in an attention core chosen once at build time (ops/attention).

scores(i, j) = [Q_i.K_j + Q_i.Kr_d(i,j) + K_j.Qr_d(i,j)] / sqrt(d * (1 + c2p + p2c)) + mask(i, j)

(docs/attention.md: the terms, the relative index d(i, j), the scale and the mask forms.)
"""
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from megatron_vega import runtime
from megatron_vega.config import ModelConfig
from megatron_vega.ops.attention import select_core
from megatron_vega.ops.dropout import dropout


class DisentangledSelfAttention(torch.nn.Module):
    """Fused QKV (column-parallel, rows laid out [heads, 3, d]) -> disentangled attention -> output projection
    (row-parallel). Position projections reuse Q/K (share_att_key) or have their own column-parallel weights."""

    def __init__(self, cfg: ModelConfig, mp_config, init_method, output_init_method):
        super().__init__()
        tp = mp_config.tensor_model_parallel_size
        self.heads = cfg.num_attention_heads // tp
        self.head_dim = cfg.kv_channels
        self.c2p, self.p2c = cfg.pos_terms
        self.share_att_key = cfg.share_att_key
        self.scale = 1.0 / math.sqrt(self.head_dim * (1 + self.c2p + self.p2c))
        self.attention_dropout = cfg.attention_dropout
        self.hidden_dropout = cfg.hidden_dropout
        self.recompute_core = False
        self.core = select_core(cfg.attention_backend, runtime.device(), mp_config.params_dtype)
        proj = cfg.num_attention_heads * cfg.kv_channels
        self.linear_qkv = tensor_parallel.ColumnParallelLinear(
            cfg.hidden_size, 3 * proj, config=mp_config, init_method=init_method, bias=True, gather_output=False)
        if not cfg.share_att_key:
            if self.c2p:
                self.linear_pos_key = tensor_parallel.ColumnParallelLinear(
                    cfg.hidden_size, proj, config=mp_config, init_method=init_method, bias=True)
            if self.p2c:
                self.linear_pos_query = tensor_parallel.ColumnParallelLinear(
                    cfg.hidden_size, proj, config=mp_config, init_method=init_method, bias=True)
        self.linear_proj = tensor_parallel.RowParallelLinear(
            proj, cfg.hidden_size, config=mp_config, init_method=output_init_method, bias=True,
            input_is_parallel=True, skip_bias_add=False)

    def _position_projections(self, rel_embeddings):
        """[2k, H] relative table -> (Kr, Qr), each [heads_local, 2k, d] (or None when the term is off)."""
        rel = copy_to_tensor_model_parallel_region(rel_embeddings)  # its grad sums over this rank's heads
        rows = rel.shape[0]
        if self.share_att_key:  # only the Q and K rows of the fused weight (the V third would be unused)
            weight = self.linear_qkv.weight.view(self.heads, 3, self.head_dim, -1)[:, :2]
            bias = self.linear_qkv.bias.view(self.heads, 3, self.head_dim)[:, :2]
            qk = runtime.in_fp32(F.linear, rel, weight.reshape(-1, weight.shape[-1]), bias.reshape(-1))
            qk = qk.view(rows, self.heads, 2, self.head_dim)
            pos_query, pos_key = qk[:, :, 0], qk[:, :, 1]
        else:
            pos_key = pos_query = None
            if self.c2p:
                pos_key = runtime.in_fp32(F.linear, rel, self.linear_pos_key.weight, self.linear_pos_key.bias)
            if self.p2c:
                pos_query = runtime.in_fp32(F.linear, rel, self.linear_pos_query.weight,
                                            self.linear_pos_query.bias)
            pos_key, pos_query = [None if t is None else t.view(rows, self.heads, self.head_dim)
                                  for t in (pos_key, pos_query)]
        as_heads = lambda t: None if t is None else t.permute(1, 0, 2)  # noqa: E731
        return as_heads(pos_key) if self.c2p else None, as_heads(pos_query) if self.p2c else None

    def _core(self, qkv, pos_key, pos_query, rel_index, mask_bias, prefix_key, prefix_value):
        p = self.attention_dropout if self.training else 0.0
        # (QK^T + c2p + p2c) * scale: the scale goes on the small [h, 2k, d] tables, not on Q
        scaled = lambda t: None if t is None else t * self.scale  # noqa: E731
        with tensor_parallel.get_cuda_rng_tracker().fork():  # heads differ per TP rank, so does their dropout
            return self.core(qkv, prefix_key, prefix_value, scaled(pos_key), scaled(pos_query), rel_index, mask_bias,
                             p, self.scale)

    def forward(self, hidden, rel_embeddings, rel_index, mask_bias, prefix=None):
        """hidden: [s, b, H] (sequence-parallel chunk when SP is on) -> [s, b, H]. The per-batch tensors of
        AttentionInputs: ``rel_index`` [s, s] or [b, s, s], ``mask_bias`` [b, 1, s, P + s] (additive), ``prefix``
        this rank's heads of a deep prompt, (keys, values) each [b, heads, P, d]."""
        qkv, _ = self.linear_qkv(hidden)
        s, b = qkv.shape[:2]
        qkv = qkv.view(s, b, self.heads, 3, self.head_dim).permute(3, 1, 2, 0, 4)  # [3, b, h, s, d]
        # pos_dropout: per layer, on the replicated table, so the default RNG (identical on TP ranks)
        rel = dropout(rel_embeddings, self.hidden_dropout, self.training)
        pos_key, pos_query = self._position_projections(rel)
        core_args = (qkv, pos_key, pos_query, rel_index, mask_bias, *(prefix or (None, None)))
        if self.recompute_core:  # (the checkpoint function saves tensors, not tuples: the prefix goes as two)
            context = tensor_parallel.checkpoint(self._core, False, *core_args)
        else:
            context = self._core(*core_args)
        context = context.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
        out, _ = self.linear_proj(context)
        return out
