"""Disentangled self-attention (DeBERTa-v2), heads split across tensor-parallel ranks.

scores(i, j) = [Q_i.K_j + Q_i.Kr_d(i,j) + K_j.Qr_d(i,j)] / sqrt(d * (1 + c2p + p2c))      (method_spec §4.4)

The two relative terms are computed as [s, 2k] products against the (small) relative tables and gathered into
one additive bias with the padding mask. On GPU the softmax(QK^T + bias)V part runs in PyTorch's
scaled_dot_product_attention (memory-efficient kernel, which takes a bias with a gradient). On CPU, SDPA with a
grad-requiring bias or dropout falls back to its math path (an extra bias add and -inf-safe softmax passes), so
the fp32 CPU path is written out: the bias is added inside the QK^T GEMM (baddbmm).
"""
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from megatron_vega.config import ModelConfig


def relative_bias(q, k, pos_key, pos_query, rel_index):
    """c2p + p2c as one [b, h, s, s] bias. q, k: [b, h, s, d]; pos_*: [h, 2k, d] (already scaled) or None."""
    s = q.shape[2]
    index = rel_index.expand(q.shape[0], q.shape[1], s, s)
    bias = None
    if pos_key is not None:  # c2p: Q_i . Kr_delta(i,j)
        bias = torch.gather(torch.matmul(q, pos_key.transpose(-1, -2)), -1, index)
    if pos_query is not None:  # p2c: K_j . Qr_delta(i,j), gathered along the key's row then transposed
        p2c = torch.gather(torch.matmul(k, pos_query.transpose(-1, -2)), -1, index.transpose(-1, -2))
        p2c = p2c.transpose(-1, -2)
        bias = p2c if bias is None else bias + p2c
    return bias


def _softmax_attention(q, k, v, bias, dropout_p: float, scale: float):
    """softmax(scale * QK^T + bias) V on q [b, h, s, d], k/v [b, h, t, d]; bias [b, h or 1, s, t] or None.
    The CPU path."""
    b, h, s, d = q.shape
    t = k.shape[2]
    q3 = q.reshape(b * h, s, d)  # views for the [s, b, h, 3, d] QKV layout
    k3, v3 = k.reshape(b * h, t, d), v.reshape(b * h, t, d)
    if bias is None:
        scores = torch.bmm(q3, k3.transpose(1, 2)) * scale
    else:
        bias = bias.expand(b, h, s, t).reshape(b * h, s, t)
        scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p, True)
    return torch.bmm(probs, v3).view(b, h, s, d)


def disentangled_attention(q, k, v, pos_key, pos_query, rel_index, mask_bias, dropout_p: float, scale: float,
                           prefix=None):
    """softmax((QK^T + c2p + p2c) * scale + mask) V, with the softmax accumulated in fp32. mask_bias
    [b, 1, s, P + s] or None (no padding). ``prefix``: deep-prompt (keys, values) [b, h, P, d] put in front of the
    tokens' (P-tuning v2); they have no position, so their relative-position bias is zero."""
    scaled = lambda t: None if t is None else t * scale  # noqa: E731  (the small [h, 2k, d] tables, not Q)
    bias = relative_bias(q, k, scaled(pos_key), scaled(pos_query), rel_index)
    if prefix is not None:
        k, v = torch.cat([prefix[0], k], dim=2), torch.cat([prefix[1], v], dim=2)
        bias = None if bias is None else F.pad(bias, (prefix[0].shape[2], 0))
    if mask_bias is not None:
        mask_bias = mask_bias.to(q.dtype)
        bias = mask_bias if bias is None else bias + mask_bias
    if q.device.type == "cpu" and q.dtype == torch.float32:  # bf16 keeps SDPA: its math path scores in fp32
        return _softmax_attention(q, k, v, bias, dropout_p, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


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
        if self.share_att_key:
            qkv = F.linear(rel, self.linear_qkv.weight, self.linear_qkv.bias).view(rows, self.heads, 3, self.head_dim)
            pos_query, pos_key = qkv[:, :, 0], qkv[:, :, 1]
        else:
            pos_key = pos_query = None
            if self.c2p:
                pos_key = F.linear(rel, self.linear_pos_key.weight, self.linear_pos_key.bias)
            if self.p2c:
                pos_query = F.linear(rel, self.linear_pos_query.weight, self.linear_pos_query.bias)
            pos_key, pos_query = [None if t is None else t.view(rows, self.heads, self.head_dim)
                                  for t in (pos_key, pos_query)]
        as_heads = lambda t: None if t is None else t.permute(1, 0, 2)  # noqa: E731
        return as_heads(pos_key) if self.c2p else None, as_heads(pos_query) if self.p2c else None

    def _core(self, q, k, v, pos_key, pos_query, rel_index, mask_bias, prefix_key, prefix_value):
        dropout = self.attention_dropout if self.training else 0.0
        prefix = None if prefix_key is None else (prefix_key, prefix_value)
        with tensor_parallel.get_cuda_rng_tracker().fork():  # heads differ per TP rank, so does their dropout
            return disentangled_attention(q, k, v, pos_key, pos_query, rel_index, mask_bias, dropout, self.scale,
                                          prefix)

    def forward(self, hidden, rel_embeddings, rel_index, mask_bias, prefix=None):
        """hidden: [s, b, H] (sequence-parallel chunk when SP is on) -> [s, b, H]. ``prefix``: this rank's heads
        of a deep prompt, (keys, values) each [b, heads, P, d]."""
        qkv, _ = self.linear_qkv(hidden)
        s, b = qkv.shape[:2]
        qkv = qkv.view(s, b, self.heads, 3, self.head_dim).permute(3, 1, 2, 0, 4)  # [3, b, h, s, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        # pos_dropout: per layer, on the replicated table, so the default RNG (identical on TP ranks)
        rel = F.dropout(rel_embeddings, self.hidden_dropout, self.training)
        pos_key, pos_query = self._position_projections(rel)
        core_args = (q, k, v, pos_key, pos_query, rel_index, mask_bias, *(prefix or (None, None)))
        if self.recompute_core:  # (the checkpoint function saves tensors, not tuples: the prefix goes as two)
            context = tensor_parallel.checkpoint(self._core, False, *core_args)
        else:
            context = self._core(*core_args)
        context = context.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
        out, _ = self.linear_proj(context)
        return out
