"""Building a task's prompt, initialising it, and its file: one small ``.pt`` per task, layout-independent.

A prompt file holds the prompt's structure and weights, the task head's weights, the backbone shape it was
trained on, and where it came from (task, dev score, the source prompt of a transfer). It is written by rank 0
to a temporary name and renamed, never over an existing file unless asked.
"""
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

from megatron_vega.errors import VegaInputError
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.prompt.prompt import Prompt

FORMAT = "megatron_vega.prompt/1"
VOCAB_INIT_TOP = 5000  # Lester et al. draw prompt-init tokens from the 5000 most common (sentencepiece ids ~ rank)


def structure_of(cfg) -> dict:
    """The parts of a PromptConfig that shape the prompt's tensors (saved with them)."""
    return {"type": cfg.prompt_type, "length": cfg.prompt_length, "encoder": cfg.prompt_encoder,
            "hidden_size": cfg.prompt_hidden_size, "dropout": cfg.prompt_dropout}


def backbone_shape(model_cfg) -> dict:
    return {k: getattr(model_cfg, k) for k in ("num_layers", "hidden_size", "num_attention_heads", "kv_channels",
                                               "vocab_size")}


def init_ids(cfg, tokenizer, seed: int) -> list[int] | None:
    """Token ids that initialise the prompt (None: random init)."""
    if cfg.prompt_init == "random":
        return None
    if cfg.prompt_init == "vocab":
        special = set(tokenizer.special_ids.tolist())
        pool = [i for i in range(min(VOCAB_INIT_TOP, tokenizer.vocab_size)) if i not in special]
        return np.random.default_rng(seed).choice(pool, cfg.prompt_length, replace=len(pool) < cfg.prompt_length
                                                  ).tolist()
    ids = tokenizer.encode(cfg.prompt_init_text)
    if not ids:
        raise VegaInputError("--prompt-init-text", "encodes to no token")
    return (ids * -(-cfg.prompt_length // len(ids)))[:cfg.prompt_length]


@torch.no_grad()
def real_word_prefix(encoder, ids: list[int], cls_id: int, sep_id: int) -> torch.Tensor:
    """Keys and values of ``ids`` (in [CLS] ids [SEP]) at every layer of the frozen encoder, as a deep prompt
    table [P, L*2*heads*d] (Li & Liang's prefix init with real words' activations)."""
    captured = []
    hooks = [layer.attention.linear_qkv.register_forward_hook(lambda m, i, out: captured.append(out[0]))
             for layer in encoder.layers]
    tokens = torch.tensor([[cls_id, *ids, sep_id]], device=encoder.rel_embeddings.weight.device)
    was_training = encoder.training
    encoder.eval()
    try:
        encoder(tokens, AttentionInputs(torch.ones_like(tokens)))
    finally:
        encoder.train(was_training)
        for h in hooks:
            h.remove()
    cfg = encoder.cfg
    per_layer = []
    for qkv in captured:  # [s, 1, 3*heads/tp*d] -> all heads [s, heads, 3, d]: column shards are whole heads
        full = gather_from_tensor_model_parallel_region(qkv)[1:-1, 0].float()
        full = full.view(len(ids), cfg.num_attention_heads, 3, cfg.kv_channels)
        per_layer.append(full[:, :, 1:].permute(0, 2, 1, 3))  # keys, values: [P, 2, heads, d]
    return torch.stack(per_layer, dim=1).reshape(len(ids), -1)


def build_prompt(cfg, model_cfg, encoder, tokenizer, seed: int) -> Prompt:
    """A new prompt shaped by ``cfg``, initialised per --prompt-init."""
    structure = structure_of(cfg)
    prompt = Prompt(structure, model_cfg)
    ids = init_ids(cfg, tokenizer, seed)
    table = None
    if ids is not None:
        if structure["type"] == "deep" and structure["encoder"] == "none":
            table = real_word_prefix(encoder, ids, tokenizer.cls_id, tokenizer.sep_id)
        else:
            table = encoder.word_embeddings(torch.tensor(ids, device=encoder.rel_embeddings.weight.device)).float()
    prompt.encoder.reset_parameters(seed, None if table is None else table.cpu())
    return prompt


# -- files ------------------------------------------------------------------------------------------------------
def read_prompt_file(path: str, model_cfg=None, task: str | None = None) -> dict:
    """A prompt file's content, checked against the backbone (when given) and the task (when given)."""
    if not Path(path).is_file():
        raise VegaInputError(path, "no such prompt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling failure means the same thing to the user)
        raise VegaInputError(path, f"not a readable prompt file ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VegaInputError(path, f"not a prompt file (expected format {FORMAT})")
    if model_cfg is not None and state["backbone"] != backbone_shape(model_cfg):
        raise VegaInputError(path, f"prompt was trained on a different backbone {state['backbone']}, this one is "
                                   f"{backbone_shape(model_cfg)}")
    if task is not None and state["task"] != task:
        raise VegaInputError(path, f"prompt and head are for {state['task']}, not {task}")
    return state


def save_prompt_file(path: str, prompt: Prompt, head, model_cfg, meta: dict, overwrite: bool) -> None:
    """Rank 0 writes ``path`` atomically; every rank returns after it is there. Collective."""
    if dist.get_rank() == 0:
        target = Path(path)
        if target.exists() and not overwrite:
            raise VegaInputError(path, "exists; pass --overwrite to replace it")
        state = {"format": FORMAT, **meta, "structure": prompt.structure, "backbone": backbone_shape(model_cfg),
                 "prompt": {k: v.detach().float().cpu() for k, v in prompt.state_dict().items()},
                 "head": {k: v.detach().float().cpu() for k, v in head.state_dict().items()}}
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, target)
    dist.barrier()


def prompt_from_file(state: dict, model_cfg, path: str) -> Prompt:
    """The prompt a (read, checked) prompt file holds, every tensor loaded."""
    prompt = Prompt(state["structure"], model_cfg)
    load_all(prompt, state["prompt"], path, "prompt")
    return prompt


def load_all(module, tensors: dict, path: str, what: str) -> None:
    """Copy every tensor of ``module`` from ``tensors``; a missing or mis-shaped one is the file's error."""
    copied = load_weights(module, tensors)
    missing = sorted(set(module.state_dict()) - set(copied))
    if missing:
        raise VegaInputError(path, f"{what} lacks or mis-shapes {', '.join(missing[:3])}")


@torch.no_grad()
def load_weights(module, tensors: dict, skip=lambda name: False) -> list[str]:
    """Copy the tensors whose name and shape match ``module``'s (and ``skip`` does not exclude); returns them."""
    copied = []
    for name, p in module.state_dict().items():
        src = tensors.get(name)
        if src is not None and src.shape == p.shape and not skip(name):
            p.copy_(src)
            copied.append(name)
    return copied
