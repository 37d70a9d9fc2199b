"""What a resume may and may not silently do: checks between the flags of a run and the checkpoint it loads.

Each check runs before training starts and turns a disagreement into one line naming both sides and the way to
proceed (megatron_vega.errors.VegaInputError), never a traceback at the first save or a silent choice.
"""
from pathlib import Path

from megatron_vega.errors import VegaInputError
from megatron_vega.training import checkpointing


def checkpoint_to_load(load: str, save: str | None, ckpt_step: int | None) -> int | None:
    """The iteration `--load` will read, or None for a fresh start. A directory without a checkpoint is a fresh
    start only when it is also `--save` (the requeue pattern: the first launch finds it empty); anywhere else it
    is a mistyped path and an error."""
    latest = checkpointing.latest_iteration(load) if Path(load).is_dir() else None
    if latest is None:
        if save is not None and Path(load).resolve() == Path(save).resolve() and ckpt_step is None:
            return None
        what = "does not exist" if not Path(load).exists() else f"holds no checkpoint (no {checkpointing.TRACKER})"
        raise VegaInputError("--load", f"{load} {what}; to start from scratch drop --load (or pass the --save "
                                       "directory, as a requeued job does)")
    iteration = latest if ckpt_step is None else ckpt_step
    checkpointing.checkpoint_path(load, iteration)  # complete, or a one-line error
    return iteration


def check_optimizer_state(saved_config: dict, precision: str, distributed_optimizer: bool, load: str) -> None:
    """Optimizer state is laid out per precision (bf16/fp16 keep fp32 main parameters beside the model's; fp32
    does not) and per optimizer (the distributed one stores its own parameter groups): restoring it across a
    change of either is refused before anything is read."""
    train = saved_config.get("train", {})
    saved = "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else "fp32"
    how = ("load the weights only with --no-load-optim (continue the run) or --finetune (start a new one)")
    if saved != precision:
        raise VegaInputError("--load", f"{load} was trained in {saved} and this run asks for {precision}: its "
                                       f"optimizer state does not carry over; {how}")
    saved_distributed = bool(saved_config.get("parallel", {}).get("use_distributed_optimizer", False))
    if saved_distributed != distributed_optimizer:
        said = {True: "with --use-distributed-optimizer", False: "without --use-distributed-optimizer"}
        raise VegaInputError("--use-distributed-optimizer", f"{load} was saved {said[saved_distributed]} and this "
                                                            f"run is {said[distributed_optimizer]}: its optimizer "
                                                            f"state does not carry over; {how}")


# (scheduler attribute, what the user changes to move it)
SCHEDULE_FIELDS = (("max_lr", "--lr"), ("min_lr", "--min-lr"),
                   ("lr_warmup_steps", "--lr-warmup-iters/--lr-warmup-fraction"),
                   ("lr_decay_steps", "--train-iters/--lr-decay-iters"),
                   ("lr_decay_style", "--lr-decay-style"), ("start_wd", "--weight-decay"),
                   ("end_wd", "--weight-decay"))


def schedule_of(scheduler) -> dict:
    return {name: getattr(scheduler, name) for name, _ in SCHEDULE_FIELDS}


def reconcile_schedule(scheduler, flags: dict, override: bool, use_checkpoint: bool, load: str) -> list[str]:
    """`scheduler` holds the checkpoint's schedule (just loaded), `flags` the one the flags describe. Follow the
    explicit choice, or refuse a difference in one line. Returns the differing fields as 'name: ckpt -> flags'."""
    if override and use_checkpoint:
        raise VegaInputError("--override-opt-param-scheduler",
                             "and --use-checkpoint-opt-param-scheduler contradict each other; give one")
    saved = schedule_of(scheduler)
    differ = [(name, flag) for name, flag in SCHEDULE_FIELDS if saved[name] != flags[name]]
    if differ and not (override or use_checkpoint):
        name, flag = differ[0]
        raise VegaInputError(flag, f"the schedule in {load} has {name} = {saved[name]} but the flags give "
                                   f"{flags[name]}; pass --override-opt-param-scheduler to follow the flags or "
                                   "--use-checkpoint-opt-param-scheduler to keep the checkpoint's")
    if differ and override:
        for name, _ in differ:
            setattr(scheduler, name, flags[name])
        scheduler.step(increment=0)  # recompute the learning rate at the restored step under the new schedule
    return [f"{name}: {saved[name]} -> {flags[name]}" for name, _ in differ]
