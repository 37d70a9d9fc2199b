"""``finetune_superglue.py --dry-run``: check a fine-tuning layout for any world size in one process.

Nothing is read: no checkpoint, tokenizer or data file (the recipes dry-run on machines that have none of them).
The flags have already passed ``FinetuneRun.validate``; this checks what depends on the world the launcher
describes (WORLD_SIZE, see ``config.world_size``): TP divides it, the global batch splits into micro-batches over
the data-parallel ranks and, for ``--model-preset``, TP divides the heads, FFN and padded vocabulary. A model
given by ``--load`` is checked against TP when it loads (its shape lives in the checkpoint).
"""
from megatron_vega.config import ParallelConfig, model_preset
from megatron_vega.data.sampler import check_batch_sizes
from megatron_vega.errors import VegaInputError
from megatron_vega.unimc.config import UniMCConfig, describe


def _data_parallel_size(tp: int, world: int) -> int:
    if tp < 1:
        raise VegaInputError("--tensor-model-parallel-size", f"must be >= 1, got {tp}")
    if world % tp:
        raise VegaInputError("--tensor-model-parallel-size",
                             f"TP={tp} does not divide the world size {world} (WORLD_SIZE)")
    return world // tp


def dry_run(run, world: int) -> dict:
    """Raise VegaInputError (naming the flag) for an impossible layout; print and return the plan."""
    t, o, tr = run.task, run.optim, run.transductive
    tp = o.tensor_model_parallel_size
    _data_parallel_size(tp, world)
    if run.model_preset:
        ParallelConfig(tensor_model_parallel_size=tp).validate(model_preset(run.model_preset), world)
    dp = world // tp
    gbs = o.global_batch_size or o.micro_batch_size * dp
    check_batch_sizes(gbs, o.micro_batch_size, dp)
    plan = {"world": world, "tp": tp, "pp": 1, "dp": dp, "global_batch": gbs,
            "micro_batches": gbs // (o.micro_batch_size * dp)}
    print(f"layout: world {world} = TP {tp} x PP 1 x DP {dp}; global batch {gbs} = {plan['micro_batches']} "
          f"micro-batches x {o.micro_batch_size} x DP {dp}")
    weights = f"random {run.model_preset}" if run.model_preset else f"{t.load} (shape checked when it loads)"
    extras = [describe(run.unimc) if t.format == "unimc" else "",
              f"{t.format} format" if t.format not in ("head", "unimc") else "",
              _prompt_summary(run),
              f"SiFT lambda {run.sift.sift_lambda}" if run.sift.sift else "",
              f"PDR {run.pdr.pdr_divergence} alpha {run.pdr.pdr_alpha} noise {run.pdr.pdr_noise:g}" if run.pdr.pdr
              else "",
              f"{tr.transductive_rounds} transductive round(s)" if tr.transductive_rounds else "",
              f"predictions -> {t.predict}" if t.predict else ""]
    what = f"multi-task {run.multitask.multitask} (T {run.multitask.multitask_temperature:g})" \
        if run.multitask.multitask else t.task
    print(f"fine-tuning {what} from {weights}: {o.epochs} epochs, lr {o.lr:g}, seq {o.seq_length}"
          + "".join(f", {e}" for e in extras if e))
    return plan


def _prompt_summary(run) -> str:
    p, panda = run.prompt, run.panda
    if not p.prompt_tuning:
        return ""
    return (f"{p.prompt_type} prompt of {p.prompt_length} (encoder {p.prompt_encoder}, frozen backbone)"
            + (f", PANDA teacher {panda.panda_teacher} ({panda.panda_kd} KD)" if panda.panda_teacher else ""))


def zero_shot_dry_run(args, data: str, flags: dict, world: int) -> dict:
    """``finetune_superglue.py zero-shot ... --dry-run``: the layout and what would be scored, nothing read (so the
    words and mask a UniMC checkpoint names are not looked up; ``flags``: the --unimc-* values given)."""
    tp = args.tensor_model_parallel_size
    dp = _data_parallel_size(tp, world)
    plan = {"world": world, "tp": tp, "pp": 1, "dp": dp, "micro_batch": args.micro_batch_size}
    print(f"layout: world {world} = TP {tp} x PP 1 x DP {dp}; each DP rank scores its share of the items "
          f"{args.micro_batch_size} at a time")
    given = "".join(f"{name.replace('_', '-')} {value}, " for name, value in flags.items())
    print(f"zero-shot {args.task} on {data} from {args.load} (shape checked when it loads): UniMC, {given}"
          f"{'other ' if given else ''}words and mask as the checkpoint names (else 'yes', 'no', "
          f"{UniMCConfig.unimc_mask}), seq {args.seq_length}"
          + (f", predictions -> {args.predict}" if args.predict else ""))
    return plan
