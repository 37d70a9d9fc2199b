"""Model FLOPs and memory arithmetic for the encoder (anchors §5.4), shared by logging, --dry-run and benchmarks.

Model FLOPs count the matrix products of the model as defined, not recomputation: forward = 2 x MACs,
training = 3 x forward. The MLM output layer is counted only at the predicted (masked) positions, which is all
this framework computes.
"""
from megatron_vega.config import ModelConfig, ParallelConfig


def forward_flops_per_token(cfg: ModelConfig, seq_length: int, predicted_fraction: float = 0.15,
                            micro_batch_size: int = 1) -> float:
    h, f, p = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads * cfg.kv_channels
    c2p, p2c = cfg.pos_terms
    span2 = 2 * cfg.attention_span
    linear = 3 * h * p + p * h + 2 * h * f  # QKV, output projection, FFN
    attention = 2 * seq_length * p + (c2p + p2c) * span2 * p  # QK^T, PV, and Q.Kr^T / K.Qr^T against 2k rows
    # projecting the relative table: once per layer and micro-batch, shared by all its tokens
    positions = (c2p + p2c) * span2 * h * p / (seq_length * micro_batch_size)
    conv = h * h * cfg.conv_kernel_size if cfg.conv_kernel_size else 0
    head = predicted_fraction * (h * h + h * cfg.vocab_size)
    return 2.0 * (cfg.num_layers * (linear + attention + positions) + conv + head)


def train_flops_per_token(cfg: ModelConfig, seq_length: int, predicted_fraction: float = 0.15,
                          reference_forward: bool = False, micro_batch_size: int = 1) -> float:
    """3 x forward; self-evolution adds one no-grad reference forward (all positions' logits are needed at the
    predicted positions only, so its head cost is the same)."""
    fwd = forward_flops_per_token(cfg, seq_length, predicted_fraction, micro_batch_size)
    return (4.0 if reference_forward else 3.0) * fwd


def params_per_rank(cfg: ModelConfig, par: ParallelConfig) -> int:
    """Parameters held by the most loaded rank (first pipeline stage: embeddings + its layers)."""
    h, f, p = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads * cfg.kv_channels
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    pos = 0 if cfg.share_att_key else sum(cfg.pos_terms) * (h * p + p)
    layer = (4 * h * p + 3 * p + h + 2 * h * f + f + h + pos) // tp + 4 * h
    stage = (cfg.num_layers // pp) * layer + 2 * cfg.attention_span * h + 2 * h
    embeddings = cfg.padded_vocab_size * h // tp + 2 * h + (h * h * cfg.conv_kernel_size + 3 * h)
    head = h * h + 3 * h + cfg.padded_vocab_size // tp + (cfg.padded_vocab_size * h // tp if pp > 1 else 0)
    return stage + embeddings + (head if pp == 1 else 0)


def memory_per_rank(cfg: ModelConfig, par: ParallelConfig, seq_length: int, micro_batch: int, dp: int,
                    precision: str) -> dict[str, float]:
    """Bytes on the busiest rank: weights, grads, optimizer state and activations (estimate).

    Weights in the training dtype; fp32 gradient buffer; Adam (2 x fp32) plus fp32 main weights when training in
    16 bits, sharded over DP with the distributed optimizer. Activations per layer and micro-batch follow
    Korthikanti et al. (34·s·b·h + 5·a·s²·b in 16 bits) plus the two [b, a, s, s] relative terms and their
    bias; with 1F1B the first stage keeps PP micro-batches in flight.
    """
    n = params_per_rank(cfg, par)
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    wbytes = 4 if precision == "fp32" else 2
    optim = 8 + (4 if precision != "fp32" else 0)
    if par.use_distributed_optimizer:
        optim /= dp
    s, b, h, a = seq_length, micro_batch, cfg.hidden_size, cfg.num_attention_heads
    act_bytes = wbytes / 2
    sp = tp if par.sequence_parallel else 1
    per_layer = act_bytes * (34 * s * b * h / sp + 5 * a * s * s * b / tp + 3 * 2 * a * s * s * b / tp)
    if par.recompute == "full":
        per_layer = wbytes * s * b * h / sp
    elif par.recompute == "selective":
        per_layer = act_bytes * 34 * s * b * h / sp
    activations = per_layer * (cfg.num_layers // pp) * pp  # 1F1B: pp micro-batches in flight on stage 0
    return {"weights": n * wbytes, "gradients": n * 4.0, "optimizer": n * optim, "activations": activations}
