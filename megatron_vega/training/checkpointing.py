"""Checkpoints through megatron-core dist_checkpointing: model, optimizer (with its loss scaler), LR schedule,
RNG states, data position and the config, loadable into a different TP/PP/DP layout.

Layout on disk (Megatron's): ``<dir>/iter_0000123/`` per checkpoint and ``<dir>/latest_checkpointed_iteration.txt``.
A checkpoint is written to ``iter_0000123.tmp`` and renamed once every rank has finished, and only then does the
tracker file (replaced atomically) point at it: a save killed half-way leaves the previous checkpoint as latest.
"""
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_vega.errors import VegaInputError
from megatron_vega.model.weights import parameters_by_global_name, sharded_state_dict
from megatron_vega.training.checkpoint_args import check_tensor_shapes
from megatron_vega.training.checkpoint_view import CheckpointView, copy_into, stored_keys
from megatron_vega.training.optimizer import allocate_adam_state, load_optimizer_state

TRACKER = "latest_checkpointed_iteration.txt"
# The distributed optimizer's state in model space, gathered per DP group on save: loadable at any TP/PP/DP layout
# and by the plain optimizer. ("fully_sharded_model_space", the 0.16 default, builds flattened-range shards that
# 0.16's own validation refuses.)
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def iteration_dir(root: str, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root: str) -> int | None:
    tracker = Path(root) / TRACKER
    if not tracker.exists():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise VegaInputError(str(tracker), f"expected an iteration number, found {text!r}")
    return int(text)


def check_save_dir(save: str, load: str | None, overwrite: bool) -> None:
    """Refuse to start a new run on top of an existing one unless resuming it (--load same dir) or told to."""
    existing = latest_iteration(save) if Path(save).is_dir() else None
    resuming = load is not None and Path(load).resolve() == Path(save).resolve()
    if existing is not None and not resuming and not overwrite:
        raise VegaInputError(save, f"already holds a run (latest iteration {existing}); resume it with "
                                   f"--load {save}, or pass --overwrite to start over")


def _rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _set_rng_state(state) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _layout() -> dict:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size()}


def _rng_object():
    pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    layout = _layout()
    return ShardedObject("rng_state", _rng_state(), (layout["pp"], layout["tp"]), (pp, tp),
                         replica_id=parallel_state.get_data_parallel_rank())


def _state(chunks, optimizer, scheduler, extra: dict, loading: bool, with_optimizer: bool, with_rng: bool) -> dict:
    model_sd = sharded_state_dict(chunks)
    state = {"model": model_sd, "extra": {**extra, "has_optimizer": with_optimizer, "has_rng": with_rng},
             "layout": _layout()}
    if with_optimizer:
        if loading:
            allocate_adam_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=loading, metadata=OPTIMIZER_METADATA)
        state["scheduler"] = scheduler.state_dict()
    if with_rng:
        state["rng_state"] = _rng_object()
    return state


def publish(root: str, iteration: int, state: dict) -> Path:
    """dist_checkpointing.save `state` as checkpoint `iteration` under `root`: written to ``iter_N.tmp``, renamed once
    every rank is done, then the tracker (replaced atomically) points at it. Collective: every rank calls it."""
    final = iteration_dir(root, iteration)
    tmp = final.with_name(final.name + ".tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(state, str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        tracker = Path(root) / TRACKER
        tracker_tmp = tracker.with_name(TRACKER + ".tmp")
        tracker_tmp.write_text(f"{iteration}\n")
        os.replace(tracker_tmp, tracker)
    dist.barrier()
    return final


def save(root: str, iteration: int, chunks, optimizer, scheduler, extra: dict, with_rng: bool = True) -> Path:
    """Write checkpoint `iteration` and publish it as latest. Collective: every rank calls it.
    Without an optimizer (conversions) the checkpoint holds the weights only."""
    state = _state(chunks, optimizer, scheduler, extra, False, optimizer is not None, with_rng)
    return publish(root, iteration, state)


def checkpoint_path(root: str, iteration: int | None = None) -> Path:
    """The directory of checkpoint `iteration` (default: latest) under `root`, checked to be complete."""
    if iteration is None:
        iteration = latest_iteration(root)
        if iteration is None:
            raise VegaInputError(root, f"no {TRACKER}: not a checkpoint directory (or no checkpoint finished)")
    path = iteration_dir(root, iteration)
    if not (path / "metadata.json").exists():
        raise VegaInputError(str(path), "incomplete or missing checkpoint (no metadata.json)")
    return path


def read_extra(root: str, iteration: int | None = None) -> dict:
    """The checkpoint's plain metadata (iteration, consumed samples, run config) without loading tensors."""
    return dist_checkpointing.load_common_state_dict(str(checkpoint_path(root, iteration)))["extra"]


def read_layout(root: str, iteration: int | None = None) -> dict:
    """The TP/PP/DP layout that wrote the checkpoint."""
    return dist_checkpointing.load_common_state_dict(str(checkpoint_path(root, iteration)))["layout"]


def load(root: str, chunks, optimizer, scheduler, with_optimizer: bool = True, with_rng: bool = True,
         iteration: int | None = None, fresh=None) -> dict:
    """Load checkpoint `iteration` (default latest) under `root` into this rank's shards; returns its `extra` dict
    (iteration, consumed samples, config). RNG states are skipped when the layout changed (they are per TP/PP
    rank); optimizer state is skipped when the checkpoint has none (converted weights). Tensors stored under other
    names are read through checkpoint_view.py; ``fresh(key, stored)`` allows a weights-only load to leave tensors
    the checkpoint lacks at their initial values (listed in the result's ``fresh``)."""
    path = checkpoint_path(root, iteration)
    common = dist_checkpointing.load_common_state_dict(str(path))
    with_optimizer = with_optimizer and common["extra"].get("has_optimizer", True)
    same_layout = common.get("layout") == _layout()
    with_rng = with_rng and same_layout and common["extra"].get("has_rng", True)
    state = _state(chunks, optimizer, scheduler, common.get("extra", {}), True, with_optimizer, with_rng)
    view = CheckpointView(state["model"], stored_keys(path), fresh)
    if with_optimizer and (view.fresh or view.renamed):
        raise VegaInputError("--load", f"{path} holds no {(view.fresh + view.renamed)[0]} (another objective or "
                                       "embedding sharing): its optimizer state does not carry over; load the "
                                       "weights only with --finetune or --no-load-optim")
    state["model"] = view.request
    check_tensor_shapes(path, state["model"])  # a model that does not match: one line, not a traceback
    loaded = dist_checkpointing.load(state, str(path))
    copy_into(parameters_by_global_name(chunks), view.compose(loaded["model"]))
    if with_optimizer:
        load_optimizer_state(optimizer, loaded["optimizer"])
        scheduler.load_state_dict(loaded["scheduler"])
    if "rng_state" in loaded:
        _set_rng_state(loaded["rng_state"])
    extra = dict(loaded["extra"])
    extra["rng_restored"] = "rng_state" in loaded
    extra["layout_changed"] = not same_layout
    extra["optimizer_restored"] = with_optimizer
    extra["fresh"] = view.fresh
    return extra
