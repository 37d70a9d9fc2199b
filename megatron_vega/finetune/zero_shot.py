"""``finetune_superglue.py zero-shot``: score a choice task's split with UniMC on an MLM checkpoint, no training
(docs/unimc_and_ppt.md, "Commands"). The flags and ``--dry-run`` are checked here before the slow imports; the
scoring itself is ``finetune/unimc.py``'s ``score_zero_shot``."""
import argparse

from megatron_vega.cli import add_dataclass_flags
from megatron_vega.errors import VegaInputError
from megatron_vega.unimc.config import CHOICE_TASKS, UniMCConfig, prediction_path, split_path


def zero_shot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune_superglue.py zero-shot", allow_abbrev=False,
                                description="Score a task's split with UniMC on an MLM checkpoint (no training).")
    p.add_argument("--task", required=True, choices=list(CHOICE_TASKS), help="Task (MC: generic multiple-choice "
                   'JSONL {"question", "passage", "options", "label"}).')
    p.add_argument("--data-dir", help="Parent of the task folders (<dir>/<Task>/<split>.jsonl).")
    p.add_argument("--data-file", help="The file to score (overrides --data-dir and --split).")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="Split to score (default val).")
    p.add_argument("--load", required=True, help="Checkpoint with an MLM head (pretraining or UniMC).")
    p.add_argument("--predict", help="Write the leaderboard file <Task>.jsonl into this directory.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing predictions file.")
    p.add_argument("--tokenizer-model", help="sentencepiece .model (default: the checkpoint's).")
    p.add_argument("--seq-length", type=int, default=512, help="Longest input (default 512).")
    p.add_argument("--micro-batch-size", type=int, default=16, help="Items per forward (default 16).")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1, help="Tensor-parallel size (default 1).")
    p.add_argument("--max-eval-examples", type=int, help="Score only the first N records.")
    p.add_argument("--dry-run", action="store_true", help="Check the flags and the layout for WORLD_SIZE; read "
                                                          "nothing.")
    # None = not given: a UniMC checkpoint's own words and mask, else UniMCConfig's defaults
    add_dataclass_flags(p, UniMCConfig, title="unimc (default: what a UniMC checkpoint names, else the default)",
                        skip=("unimc_text_mlm", "unimc_extra_tasks"))
    return p


def zero_shot(argv) -> int:
    args = zero_shot_parser().parse_args(argv)
    if not (args.data_file or args.data_dir):
        raise VegaInputError("--data-dir", "required (or --data-file)")
    if args.micro_batch_size < 1 or args.seq_length < 8:
        raise VegaInputError("--micro-batch-size", "--micro-batch-size must be >= 1 and --seq-length >= 8")
    path = args.data_file or split_path(args.task, args.data_dir, args.split)
    if args.predict and not args.overwrite and prediction_path(args.task, args.predict).exists():
        # refused before the checkpoint is read and the split scored, not after
        raise VegaInputError(str(prediction_path(args.task, args.predict)), "exists; pass --overwrite to replace it")
    if args.dry_run:
        from megatron_vega.config import world_size
        from megatron_vega.finetune.dry_run import zero_shot_dry_run
        flags = {k: getattr(args, k) for k in ("unimc_yes", "unimc_no", "unimc_mask") if getattr(args, k)}
        zero_shot_dry_run(args, path, flags, world_size())
        return 0
    from megatron_vega.finetune.unimc import score_zero_shot
    score_zero_shot(args, path)
    return 0
