"""Hugging Face export of a GLM-pretrained encoder (docs/glm_and_cloze.md, "Hugging Face export").

DebertaV2 has nothing for GLM's second position row. What transformers can run is Part A: there position 2 is 0,
so every token gets the same row 0 of the position-2 table added before the embedding LayerNorm. That is exactly
DebertaV2's absolute position input (``position_biased_input``) with every row of its table equal to row 0, so the
export writes that, and DebertaV2ForMaskedLM reproduces the encoder and MLM head on Part-A-only inputs. The whole
table (needed for Part B, i.e. blank filling) goes beside the weights in ``block_positions.safetensors``; the four
special tokens ([sop] [eop] [sMASK] [gMASK], the last ids of the vocabulary) are recorded as added tokens of the
tokenizer and as ``glm_special_tokens`` in config.json.
"""
import json

import torch

from megatron_vega.data.glm_blanks import GLM_SPECIALS

TABLE = "block_position_embeddings.weight"
BLOCK_POSITIONS_FILE = "block_positions.safetensors"
HF_POSITION_TABLE = "deberta.embeddings.position_embeddings.weight"


def is_glm_checkpoint(extra: dict) -> bool:
    """A checkpoint trained by ``--objective glm`` (with or without the position-2 table)."""
    config = extra.get("config", {})
    return config.get("objective", {}).get("objective") == "glm" or config["model"].get("block_position_embeddings",
                                                                                       0) > 0


def special_token_ids(vocab_size: int) -> dict[str, int]:
    """GLM's specials are the last ids of the (unpadded) vocabulary, in GLM_SPECIALS order (data/glm_blanks.py)."""
    return {name: vocab_size - len(GLM_SPECIALS) + i for i, name in enumerate(GLM_SPECIALS)}


def split_glm_state(state: dict[str, torch.Tensor], cfg) -> tuple[dict, dict]:
    """(full state without the position-2 table, HF tensors to add) and the table itself as a side file entry.

    Returns (state, extras) where extras = {HF name: tensor} for model.safetensors plus "table" for the side file
    (absent when the model was trained with --glm-block-positions none)."""
    state = dict(state)
    table = state.pop(TABLE, None)
    if table is None:
        return state, {}
    part_a_row = table[0].expand(cfg.max_position_embeddings, -1).contiguous()
    return state, {HF_POSITION_TABLE: part_a_row, "table": table.contiguous()}


def glm_hf_config(config: dict, cfg, with_table: bool) -> dict:
    """config.json of a GLM export: the Part-A row as an absolute position input, the special tokens named."""
    return {**config, "position_biased_input": with_table,
            "glm_special_tokens": special_token_ids(cfg.vocab_size),
            **({"glm_block_positions_file": BLOCK_POSITIONS_FILE} if with_table else {})}


def glm_tokenizer_files(files: dict[str, str], vocab_size: int) -> dict[str, str]:
    """The tokenizer files with GLM's four specials added (special, never split), so that transformers' tokenizer
    knows the ids the model gives them."""
    config = json.loads(files["tokenizer_config.json"])
    added = config.setdefault("added_tokens_decoder", {})
    for name, i in special_token_ids(vocab_size).items():
        added[str(i)] = {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    config["additional_special_tokens"] = list(GLM_SPECIALS)
    specials = json.loads(files["special_tokens_map.json"])
    specials["additional_special_tokens"] = list(GLM_SPECIALS)
    return {"tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(specials, indent=2) + "\n"}
