"""Build the model chunks of this rank from the config: megatron-core's TransformerConfig, pipeline split."""
from collections.abc import Sequence

import torch
from megatron.core import parallel_state
from megatron.core.transformer import TransformerConfig

from megatron_vega import runtime
from megatron_vega.config import ModelConfig, ParallelConfig
from megatron_vega.model.heads import MLM_HEAD, HeadSpec
from megatron_vega.model.vega_model import VegaModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def transformer_config(cfg: ModelConfig, par: ParallelConfig, precision: str = "fp32") -> TransformerConfig:
    """megatron-core's config object: read by its parallel layers, schedules, DDP and grad finalization."""
    dtype = DTYPES[precision]
    tc = TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        kv_channels=cfg.kv_channels, ffn_hidden_size=cfg.ffn_hidden_size,
        tensor_model_parallel_size=par.tensor_model_parallel_size,
        pipeline_model_parallel_size=par.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=par.virtual_stages(cfg),
        sequence_parallel=par.sequence_parallel and par.tensor_model_parallel_size > 1,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=precision == "bf16", fp16=precision == "fp16",
        hidden_dropout=cfg.hidden_dropout, attention_dropout=cfg.attention_dropout,
        layernorm_epsilon=cfg.layernorm_epsilon, init_method_std=cfg.init_method_std,
        **runtime.parallel_linear_kwargs())
    tc.has_cond_embedder = True  # all-reduce the relative-embedding grads (tagged pipeline_parallel) across stages
    return tc


def chunk_layer_ranges(num_layers: int, pp: int, vp: int | None) -> list[list[tuple[int, int]]]:
    """For each pipeline rank, the layer range of each of its (virtual) chunks; Megatron's interleaved order:
    chunk c of rank r holds block c*pp + r of num_layers/(pp*vp) layers."""
    chunks = vp or 1
    per = num_layers // (pp * chunks)
    return [[((c * pp + r) * per, (c * pp + r + 1) * per) for c in range(chunks)] for r in range(pp)]


def build_model(cfg: ModelConfig, tc: TransformerConfig, recompute: str | None = None,
                heads: Sequence[HeadSpec] = (MLM_HEAD,), name: str = "") -> list[VegaModel]:
    """The chunks this rank holds (one without virtual pipeline stages), on this machine's device. heads: the last
    chunk's heads (model/heads.py; the objective's), default the MLM head, none with heads=() (the encoder
    alone, as fine-tuning builds it). name: the model's name in its global parameter names."""
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    rank = parallel_state.get_pipeline_model_parallel_rank()
    ranges = chunk_layer_ranges(cfg.num_layers, pp, tc.virtual_pipeline_model_parallel_size)[rank]
    chunks = []
    for first, last in ranges:
        model = VegaModel(cfg, tc, layers=(first, last), pre_process=first == 0, post_process=last == cfg.num_layers,
                          heads=heads, name=name)
        model.set_recompute(recompute)
        chunks.append(model.to(device=runtime.device(), dtype=tc.params_dtype))
    return chunks


def unwrap(model):
    """The VegaModel inside megatron-core's DDP wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model
