"""Rewrite a training checkpoint at another TP x PP layout with everything a resume needs.

The checkpoint is loaded by a Trainer built at the target layout from the run configuration it records, exactly as
`pretrain_vega.py --load` at that layout would load it, and saved again: weights, optimizer state (fp32 main
parameters, Adam moments, loss scaler), learning-rate schedule, iteration, consumed samples and skipped steps.
RNG states belong to one (pipeline, tensor) rank each, so they are carried only when the layout is unchanged; a
resume at the new layout then draws dropout masks from the seed, as a direct load at that layout would.
"""
import typing
from dataclasses import fields, replace

import torch.distributed as dist

from megatron_vega.training import checkpointing
from megatron_vega.training.arguments import RunConfig


def run_config_from_dict(saved: dict) -> RunConfig:
    """The RunConfig that ``dataclasses.asdict`` wrote into a checkpoint (fields added since are defaults)."""
    hints = typing.get_type_hints(RunConfig)
    parts = {}
    for f in fields(RunConfig):
        cls = hints[f.name]
        known = {g.name for g in fields(cls) if g.init}
        parts[f.name] = cls(**{k: v for k, v in saved.get(f.name, {}).items() if k in known})
    return RunConfig(**parts)


def _layout_name(layout: dict) -> str:
    return f"TP{layout['tp']}·PP{layout['pp']}·DP{layout['dp']}"


def reshard_rank(load: str, save: str, tp: int, pp: int, objective_for) -> None:
    """One rank of the reshard (world = tp * pp, DP 1). Collective. objective_for(run, saved objective dict): the
    checkpoint's objective, which names the models to rebuild (objectives/arguments.py's objective_for_checkpoint:
    training knows no objective)."""
    from megatron_vega.training.trainer import Trainer
    extra = checkpointing.read_extra(load)
    run = run_config_from_dict(extra["config"])
    old_layout = checkpointing.read_layout(load)
    # The global batch is a property of the run, not of its layout: pin it so DP 1 keeps it.
    global_batch = run.train.global_batch_size or run.train.micro_batch_size * old_layout["dp"]
    run = replace(run, parallel=replace(run.parallel, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                        num_layers_per_virtual_pipeline_stage=None),
                  train=replace(run.train, global_batch_size=global_batch),
                  checkpoint=replace(run.checkpoint, load=load, save=save, overwrite=False, ckpt_step=None,
                                     finetune=False, no_load_optim=False, no_load_rng=False))
    objective = objective_for(run, extra["config"].get("objective", {}))
    trainer = Trainer(objective.run, objective)  # objective.run: the run with the objective's full config
    has_optimizer = extra.get("has_optimizer", True)
    rng = trainer.rng_restored
    trainer.save(with_rng=rng)
    if dist.get_rank() == 0:
        carried = ("weights, optimizer state, learning-rate schedule, loss scale" if has_optimizer
                   else "weights (the checkpoint holds no optimizer state)")
        print(f"resharded {load} at iteration {extra['iteration']} from {_layout_name(old_layout)} to "
              f"TP{tp}·PP{pp}: carried {carried}, iteration {trainer.iteration}, {trainer.consumed_samples} "
              f"consumed samples; RNG states "
              + ("carried" if rng else "not carried (they are per rank of the old layout): a resume draws "
                                       "dropout from the seed, as loading the original at the new layout does"),
              flush=True)
