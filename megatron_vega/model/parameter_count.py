"""The model's size from its config alone, without building it (planning, --dry-run, the HF comparison)."""
from megatron_vega.config import ModelConfig


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of the equivalent HF DebertaV2ForMaskedLM (unpadded vocabulary, tied output counted once)."""
    h, f, proj, v = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads * cfg.kv_channels, cfg.vocab_size
    c2p, p2c = cfg.pos_terms
    attn = 3 * (h * proj + proj) + (proj * h + h)
    if not cfg.share_att_key:
        attn += (c2p + p2c) * (h * proj + proj)
    layer = attn + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    total = cfg.num_layers * layer + v * h + 2 * h  # layers, word embeddings + LN
    total += 2 * cfg.attention_span * h + (2 * h if cfg.norm_rel_ebd else 0)
    if cfg.conv_kernel_size > 0:
        total += h * h * cfg.conv_kernel_size + h + 2 * h
    total += cfg.block_position_embeddings * h  # GLM's position-2 table (none in HF's model)
    return total + (h * h + h) + 2 * h + v  # MLM head: dense, LN, bias
