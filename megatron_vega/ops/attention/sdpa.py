"""The SDPA core: c2p + p2c gathered into one additive bias with the mask, then torch's
scaled_dot_product_attention (on a GPU its memory-efficient kernel, which takes a bias with a gradient).

It runs anywhere torch does; on a CPU in fp32 the hand-written core (cpu.py) is faster, because SDPA falls back to
its math path there. The formula: docs/attention.md.
"""
import torch
import torch.nn.functional as F

from megatron_vega.ops.attention.support import CoreSupport


def relative_bias(q, k, pos_key, pos_query, rel_index):
    """c2p + p2c as one [b, h, s, s] bias. q, k: [b, h, s, d]; pos_*: [h, 2k, d] (already scaled) or None;
    rel_index: the shared [s, s] index or a per-sample [b, s, s] one."""
    b, h, s = q.shape[:3]
    index = (rel_index if rel_index.dim() == 2 else rel_index[:, None]).expand(b, h, s, s)
    bias = None
    if pos_key is not None:  # c2p: Q_i . Kr_delta(i,j)
        bias = torch.gather(torch.matmul(q, pos_key.transpose(-1, -2)), -1, index)
    if pos_query is not None:  # p2c: K_j . Qr_delta(i,j), gathered along the key's row then transposed
        p2c = torch.gather(torch.matmul(k, pos_query.transpose(-1, -2)), -1, index.transpose(-1, -2))
        p2c = p2c.transpose(-1, -2)
        bias = p2c if bias is None else bias + p2c
    return bias


class SdpaCore:
    """Any device and dtype torch's SDPA takes; the relative bias is materialised as [b, h, s, t]."""
    name = "sdpa"
    support = CoreSupport(device_types=frozenset({"cpu", "cuda"}),
                          dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16, torch.float64}),
                          per_sample_positions=True, masks=True, prefix=True, dropout=True)

    def preferred(self, device: torch.device, dtype: torch.dtype) -> bool:
        return True

    def __call__(self, qkv, prefix_key, prefix_value, pos_key, pos_query, rel_index, mask_bias, dropout_p: float,
                 scale: float):
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = relative_bias(q, k, pos_key, pos_query, rel_index)
        if prefix_key is not None:  # deep-prompt keys/values first, without relative bias
            k, v = torch.cat([prefix_key, k], dim=2), torch.cat([prefix_value, v], dim=2)
            bias = None if bias is None else F.pad(bias, (prefix_key.shape[2], 0))
        if mask_bias is not None:
            mask_bias = mask_bias.to(q.dtype)
            bias = mask_bias if bias is None else bias + mask_bias
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
