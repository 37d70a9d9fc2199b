"""Fine-tuning checkpoints through dist_checkpointing, in the pretraining layout (``training/checkpointing.py``):
``<dir>/iter_NNNNNNN/`` plus ``latest_checkpointed_iteration.txt``, written to a ``.tmp`` directory and renamed.

Encoder tensors keep their global names (``weights.sharded_state_dict``), so an encoder loads from a pretraining
checkpoint (its MLM head and optimizer state are simply not requested) into any TP/DP layout. Head tensors are
stored under their own names (``pooler.dense.weight``, ``classifier.weight``, ...), replicated, and only weights
are saved: the fine-tuned model is the best-dev one, not the last optimizer state.
"""
from pathlib import Path

from megatron.core import dist_checkpointing, parallel_state
from megatron.core.utils import make_sharded_tensor_for_checkpoint

from megatron_vega.errors import VegaInputError
from megatron_vega.model.weights import parameters_by_global_name, sharded_state_dict
from megatron_vega.training.checkpoint_view import load_model_tensors
from megatron_vega.training.checkpointing import checkpoint_path, publish


def read_extra(root: str) -> dict:
    """The checkpoint's ``extra`` dict: ``config`` (model, data, ...) and, for fine-tuned ones, ``finetune``."""
    extra = dist_checkpointing.load_common_state_dict(str(checkpoint_path(root))).get("extra", {})
    if "model" not in extra.get("config", {}):
        raise VegaInputError(root, "checkpoint holds no model config (extra.config.model)")
    return extra


def _model_state(model, heads: dict) -> dict:
    """The encoder's sharded tensors and those of ``heads`` ({name prefix: head module}, e.g. {"": the head} or,
    for a multi-task model, {"heads.CB.": CB's head, ...})."""
    state = sharded_state_dict([model.encoder])
    for prefix, head in heads.items():
        for name, p in head.named_parameters():
            state[prefix + name] = make_sharded_tensor_for_checkpoint(p, prefix + name)
    return state


def load(root: str, model, with_head: bool, heads: dict | None = None) -> None:
    """Copy the checkpoint's encoder (and head) tensors into this rank's shards; ``heads`` as in ``_model_state``
    (default: the model's head under its own names when ``with_head``). Collective."""
    heads = heads if heads is not None else ({"": model.head} if with_head else {})
    params = {**parameters_by_global_name([model.encoder]),
              **{prefix + name: [p] for prefix, head in heads.items() for name, p in head.named_parameters()}}
    load_model_tensors(checkpoint_path(root), _model_state(model, heads), params)  # reads a gdes COCO-LM one too


def save(root: str, iteration: int, model, extra: dict, heads: dict | None = None) -> Path:
    """Write the model's weights (its head, or ``heads`` as in ``_model_state``) as checkpoint ``iteration`` of
    ``root`` and publish it. Collective."""
    layout = {"tp": parallel_state.get_tensor_model_parallel_world_size(), "pp": 1,
              "dp": parallel_state.get_data_parallel_world_size()}
    state = _model_state(model, heads if heads is not None else {"": model.head})
    return publish(root, iteration, {"model": state, "extra": extra, "layout": layout})


def checkpoint_heads(extra: dict, heads: dict) -> dict:
    """Which of ``heads`` ({task: head module}) a checkpoint with this ``extra`` holds, as {name prefix: head}: a
    single-task checkpoint its task's head (unprefixed), a multi-task one (docs/pdr_and_multitask.md) each of its
    tasks' heads under ``heads.<Task>.``; a pretraining checkpoint none."""
    finetuned = extra.get("finetune", {})
    if finetuned.get("tasks"):
        return {f"heads.{task}.": head for task, head in heads.items() if task in finetuned["tasks"]}
    task = finetuned.get("task")
    return {"": heads[task]} if task in heads else {}
