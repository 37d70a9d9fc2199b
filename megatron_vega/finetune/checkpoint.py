"""Fine-tuning checkpoints through dist_checkpointing, in the pretraining layout (``training/checkpointing.py``):
``<dir>/iter_NNNNNNN/`` plus ``latest_checkpointed_iteration.txt``, written to a ``.tmp`` directory and renamed.

Encoder tensors keep their global names (``weights.sharded_state_dict``), so an encoder loads from a pretraining
checkpoint (its MLM head and optimizer state are simply not requested) into any TP/DP layout. Head tensors are
stored under their own names (``pooler.dense.weight``, ``classifier.weight``, ...), replicated, and only weights
are saved: the fine-tuned model is the best-dev one, not the last optimizer state.
"""
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.utils import make_sharded_tensor_for_checkpoint

from megatron_vega.errors import VegaInputError
from megatron_vega.model.weights import parameters_by_global_name, sharded_state_dict
from megatron_vega.training.checkpoint_args import check_tensor_shapes
from megatron_vega.training.checkpointing import checkpoint_path, publish


def read_extra(root: str) -> dict:
    """The checkpoint's ``extra`` dict: ``config`` (model, data, ...) and, for fine-tuned ones, ``finetune``."""
    extra = dist_checkpointing.load_common_state_dict(str(checkpoint_path(root))).get("extra", {})
    if "model" not in extra.get("config", {}):
        raise VegaInputError(root, "checkpoint holds no model config (extra.config.model)")
    return extra


def _model_state(model, with_head: bool) -> dict:
    state = sharded_state_dict([model.encoder])
    if with_head:
        for name, p in model.head.named_parameters():
            state[name] = make_sharded_tensor_for_checkpoint(p, name)
    return state


def load(root: str, model, with_head: bool) -> None:
    """Copy the checkpoint's encoder (and head) tensors into this rank's shards. Collective."""
    path, state = checkpoint_path(root), _model_state(model, with_head)
    check_tensor_shapes(path, state)  # a model that does not match: one line, not a traceback
    loaded = dist_checkpointing.load({"model": state}, str(path))["model"]
    params = {**parameters_by_global_name([model.encoder]),
              **({name: [p] for name, p in model.head.named_parameters()} if with_head else {})}
    with torch.no_grad():
        for key, tensor in loaded.items():
            for p in params[key]:
                p.copy_(tensor)


def save(root: str, iteration: int, model, extra: dict) -> Path:
    """Write the model's weights as checkpoint ``iteration`` of ``root`` and publish it. Collective."""
    layout = {"tp": parallel_state.get_tensor_model_parallel_world_size(), "pp": 1,
              "dp": parallel_state.get_data_parallel_world_size()}
    return publish(root, iteration, {"model": _model_state(model, True), "extra": extra, "layout": layout})
