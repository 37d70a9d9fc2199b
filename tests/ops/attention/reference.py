"""A dense fp32 reference written straight from the formula (docs/attention.md), element by element where the
production code is clever: the relative index from each sample's positions, the mask from its definitions, and
softmax((QK^T + c2p + p2c) * scale + mask) V with deep-prompt keys/values in front (no relative bias)."""
import math

import torch

BUCKETS, MAX_POSITION, SPAN = 4, 16, 4


def bucketed_index(position_ids, buckets=BUCKETS, max_position=MAX_POSITION, span=SPAN) -> torch.Tensor:
    """[b, s] positions -> [b, s, s]: delta(i, j) = clamp(bucket(pos_i - pos_j) + span, 0, 2 span - 1)."""
    mid = buckets // 2
    rows = []
    for pos in position_ids.tolist():
        sample = []
        for pi in pos:
            row = []
            for pj in pos:
                rel = pi - pj
                if abs(rel) > mid:
                    magnitude = math.ceil(math.log(abs(rel) / mid) / math.log((max_position - 1) / mid) * (mid - 1))
                    rel = int(math.copysign(magnitude + mid, rel))
                row.append(min(max(rel + span, 0), 2 * span - 1))
            sample.append(row)
        rows.append(sample)
    return torch.tensor(rows)


def allowed_pairs(padding_mask, prefix_lengths=None, block_ids=None, attention_mask=None) -> torch.Tensor:
    """[b, s, s] bool from the definitions: both tokens real, and every mask given lets query i see key j."""
    b, s = padding_mask.shape
    out = torch.zeros(b, s, s, dtype=torch.bool)
    for n in range(b):
        for i in range(s):
            for j in range(s):
                ok = bool(padding_mask[n, i]) and bool(padding_mask[n, j])
                if prefix_lengths is not None:
                    ok &= j < prefix_lengths[n] or j <= i
                if block_ids is not None:
                    ok &= block_ids[n, j] == 0 or block_ids[n, i] == block_ids[n, j]
                if attention_mask is not None:
                    ok &= bool(attention_mask[n, i, j])
                out[n, i, j] = ok
    return out


def attention(q, k, v, pos_key, pos_query, index, allowed, scale, prefix=None):
    """q, k, v [b, h, s, d]; pos_key (Kr), pos_query (Qr) [h, 2k, d] unscaled or None; index [b, s, s];
    allowed [b, s, s]; prefix (keys, values) [b, h, P, d] or None -> [b, h, s, d]."""
    scores = q @ k.transpose(-1, -2)
    if pos_key is not None:  # c2p(i, j) = Q_i . Kr_delta(i, j)
        scores = scores + torch.einsum("bhid,hbijd->bhij", q, pos_key[:, index])
    if pos_query is not None:  # p2c(i, j) = K_j . Qr_delta(i, j)
        scores = scores + torch.einsum("bhjd,hbijd->bhij", k, pos_query[:, index])
    scores = scores * scale + torch.where(allowed, 0.0, torch.finfo(q.dtype).min)[:, None]
    if prefix is not None:
        scores = torch.cat([q @ prefix[0].transpose(-1, -2) * scale, scores], -1)
        v = torch.cat([prefix[1], v], 2)
    return torch.softmax(scores, -1) @ v
