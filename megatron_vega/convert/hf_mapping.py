"""Our parameter names <-> Hugging Face DebertaV2ForMaskedLM (method_spec §4.7-4.8), both on full tensors.

Fused QKV rows are laid out [heads, 3, head_dim] so that tensor-parallel column splits keep whole heads; HF keeps
separate query/key/value projections. Vocabulary padding rows are dropped on export and added on import.

On import, what transformers writes under other names is brought to one naming first (``canonical_hf_names``):
a bare ``DebertaV2Model`` has no ``deberta.`` prefix, and the default ``legacy: true`` MLM head is called
``cls.predictions.*`` (the same dense -> GELU -> LayerNorm -> tied decoder + bias as ``lm_predictions.lm_head``).
"""
import torch

from megatron_vega.config import ModelConfig
from megatron_vega.training.flops import count_parameters  # noqa: F401  (the HF model's size)

_LAYER = {  # per-layer renames (ours -> HF), apart from the fused QKV
    "attention.linear_proj": "attention.output.dense",
    "post_attention_layernorm": "attention.output.LayerNorm",
    "linear_fc1": "intermediate.dense",
    "linear_fc2": "output.dense",
    "post_mlp_layernorm": "output.LayerNorm",
    "attention.linear_pos_key": "attention.self.pos_key_proj",
    "attention.linear_pos_query": "attention.self.pos_query_proj",
}
_GLOBAL = {
    "word_embeddings.weight": "deberta.embeddings.word_embeddings.weight",
    "embedding_layernorm": "deberta.embeddings.LayerNorm",
    "rel_embeddings.weight": "deberta.encoder.rel_embeddings.weight",
    "rel_layernorm": "deberta.encoder.LayerNorm",
    "conv.conv": "deberta.encoder.conv.conv",
    "conv.layernorm": "deberta.encoder.conv.LayerNorm",
    "lm_head.dense": "lm_predictions.lm_head.dense",
    "lm_head.layernorm": "lm_predictions.lm_head.LayerNorm",
    "lm_head.bias": "lm_predictions.lm_head.bias",
}


_LEGACY_MLM_HEAD = {  # legacy=true names -> legacy=false names of the same tensors
    "cls.predictions.transform.dense": "lm_predictions.lm_head.dense",
    "cls.predictions.transform.LayerNorm": "lm_predictions.lm_head.LayerNorm",
    "cls.predictions.bias": "lm_predictions.lm_head.bias",
}
_TIED_COPIES = {  # written by some transformers versions; must equal the tensor they are tied to
    "cls.predictions.decoder.weight": "deberta.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
MLM_HEAD_KEYS = ("lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layernorm.weight", "lm_head.layernorm.bias",
                 "lm_head.bias")
TASK_HEAD_PREFIXES = ("pooler.", "classifier.")  # DebertaV2ForSequenceClassification / ForMultipleChoice


def canonical_hf_names(hf: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One naming for every DebertaV2 checkpoint transformers writes: ``deberta.*`` encoder keys, the MLM head as
    ``lm_predictions.lm_head.*``, task heads (``pooler.*``, ``classifier.*``) unchanged. Returns the renamed state
    and a note per group of keys left out (a ``ValueError`` when a tied copy differs from its original)."""
    out, notes = {}, []
    for name, t in hf.items():
        if name.startswith(("embeddings.", "encoder.")):  # DebertaV2Model: the base model without its prefix
            name = "deberta." + name
        if name in _TIED_COPIES or name.endswith("embeddings.position_ids"):
            continue  # checked below / a constant buffer
        out[_rename(name, _LEGACY_MLM_HEAD) or name] = t
    for copy, original in _TIED_COPIES.items():
        if copy in hf and original in hf and not torch.equal(hf[copy], hf[original]):
            raise ValueError(f"{copy} differs from {original}; this model ties them")
    dropped = sorted(k for k in out if k.startswith("mask_predictions."))
    if dropped:  # DeBERTa-v3's replaced-token-detection head: not part of this MLM model
        notes.append(f"left out {len(dropped)} mask_predictions.* tensors (the replaced-token-detection head)")
        out = {k: v for k, v in out.items() if k not in dropped}
    return out, notes


def split_task_head(hf: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder and MLM head, task head) of a canonically named state."""
    head = {k: v for k, v in hf.items() if k.startswith(TASK_HEAD_PREFIXES)}
    return {k: v for k, v in hf.items() if k not in head}, head


def fresh_mlm_head(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """The MLM head ``init_weights`` gives a model built with ``seed``: for encoders imported without one."""
    from megatron_vega.model.weights import _initial_value
    h = cfg.hidden_size
    shapes = {"lm_head.dense.weight": [h, h], "lm_head.bias": [cfg.padded_vocab_size]}
    return {name: _initial_value(name, shapes.get(name, [h]), cfg.init_method_std, seed) for name in MLM_HEAD_KEYS}


def hf_config_dict(cfg: ModelConfig, architecture: str = "DebertaV2ForMaskedLM") -> dict:
    return {
        "model_type": "deberta-v2", "architectures": [architecture], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads, "attention_head_size": cfg.kv_channels,
        "intermediate_size": cfg.ffn_hidden_size, "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.hidden_dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": 0,
        "position_biased_input": False, "relative_attention": True,
        "max_relative_positions": cfg.max_relative_positions, "position_buckets": cfg.position_buckets,
        "pos_att_type": [t for t in ("p2c", "c2p") if t in cfg.pos_att_type],
        "share_att_key": cfg.share_att_key, "norm_rel_ebd": "layer_norm" if cfg.norm_rel_ebd else "none",
        "conv_kernel_size": cfg.conv_kernel_size, "conv_act": cfg.conv_act, "layer_norm_eps": cfg.layernorm_epsilon,
        "pad_token_id": cfg.pad_token_id, "initializer_range": cfg.init_method_std, "legacy": False,
    }


def _rename(name: str, table: dict[str, str]) -> str | None:
    for ours, theirs in table.items():
        if name == ours or name.startswith(ours + "."):
            return theirs + name[len(ours):]
    return None


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Full Vega state dict -> HF DebertaV2ForMaskedLM state dict (no missing or unexpected keys)."""
    heads, d = cfg.num_attention_heads, cfg.kv_channels
    out = {}
    for name, t in state.items():
        if name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            prefix = f"deberta.encoder.layer.{idx}."
            if rest.startswith("attention.linear_qkv."):
                kind = rest.rsplit(".", 1)[1]
                parts = t.view(heads, 3, d, *t.shape[1:])
                for j, proj in enumerate(("query_proj", "key_proj", "value_proj")):
                    out[f"{prefix}attention.self.{proj}.{kind}"] = parts[:, j].reshape(heads * d, *t.shape[1:])
                continue
            out[prefix + _rename(rest, _LAYER)] = t
        else:
            hf = _rename(name, _GLOBAL)
            if hf is None:
                raise KeyError(f"no Hugging Face name for {name}")
            out[hf] = t[: cfg.vocab_size] if name in ("word_embeddings.weight", "lm_head.bias") else t
    return {k: v.contiguous() for k, v in out.items()}


def from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Canonically named HF DebertaV2 encoder (+ MLM head) state -> full Vega state dict (vocabulary padded with
    zero rows). Task-head keys are not accepted here (``split_task_head``)."""
    inverse_layer = {v: k for k, v in _LAYER.items()}
    inverse_global = {v: k for k, v in _GLOBAL.items()}
    heads, d = cfg.num_attention_heads, cfg.kv_channels
    out, qkv = {}, {}
    for name, t in hf.items():
        if name.startswith("deberta.encoder.layer."):
            idx, rest = name[len("deberta.encoder.layer."):].split(".", 1)
            if rest.startswith("attention.self.") and rest.split(".")[2] in ("query_proj", "key_proj", "value_proj"):
                proj, kind = rest.split(".")[2:4]
                qkv.setdefault((idx, kind), {})[proj] = t
                continue
            ours = _rename(rest, inverse_layer)
            if ours is None:
                raise KeyError(f"unexpected Hugging Face key {name}")
            out[f"layers.{idx}.{ours}"] = t
        else:
            ours = _rename(name, inverse_global)
            if ours is None:
                raise KeyError(f"unexpected Hugging Face key {name}")
            if ours in ("word_embeddings.weight", "lm_head.bias") and t.shape[0] < cfg.padded_vocab_size:
                t = torch.cat([t, t.new_zeros(cfg.padded_vocab_size - t.shape[0], *t.shape[1:])])
            out[ours] = t
    for (idx, kind), parts in qkv.items():
        stacked = torch.stack([parts[p].view(heads, d, *parts[p].shape[1:])
                               for p in ("query_proj", "key_proj", "value_proj")], dim=1)
        out[f"layers.{idx}.attention.linear_qkv.{kind}"] = stacked.reshape(3 * heads * d, *stacked.shape[3:])
    return out


def model_config_from_hf(hf: dict) -> dict:
    """ModelConfig fields from an HF DebertaV2 config.json (the inverse of hf_config_dict)."""
    pos = hf.get("pos_att_type") or []
    pos = pos.split("|") if isinstance(pos, str) else pos
    heads = hf["num_attention_heads"]
    return dict(
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], num_attention_heads=heads,
        kv_channels=hf.get("attention_head_size") or hf["hidden_size"] // heads,
        ffn_hidden_size=hf["intermediate_size"], vocab_size=hf["vocab_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        position_buckets=hf.get("position_buckets", -1), max_relative_positions=hf.get("max_relative_positions", -1),
        share_att_key=hf.get("share_att_key", False), pos_att_type="|".join(pos) if pos else "none",
        norm_rel_ebd="layer_norm" in str(hf.get("norm_rel_ebd", "none")),
        conv_kernel_size=hf.get("conv_kernel_size", 0), conv_act=hf.get("conv_act", "tanh"),
        layernorm_epsilon=hf.get("layer_norm_eps", 1e-7), hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), pad_token_id=hf.get("pad_token_id", 0),
        init_method_std=hf.get("initializer_range", 0.02))


def unsupported_hf_features(hf: dict) -> list[str]:
    """What this encoder does not implement (the conversion refuses rather than silently dropping it)."""
    problems = []
    if hf.get("position_biased_input", True):
        problems.append("position_biased_input=true (absolute position embeddings)")
    if hf.get("type_vocab_size", 0) > 0:
        problems.append("type_vocab_size > 0 (token type embeddings)")
    if hf.get("embedding_size", hf["hidden_size"]) != hf["hidden_size"]:
        problems.append("embedding_size != hidden_size")
    if not hf.get("relative_attention", False):
        problems.append("relative_attention=false")
    if hf.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act={hf.get('hidden_act')}")
    return problems
