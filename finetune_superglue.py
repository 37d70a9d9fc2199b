"""Fine-tune a Vega encoder on a SuperGLUE task, or score and package predictions.

    torchrun --nproc_per_node N finetune_superglue.py --task CB --data-dir DIR --load CKPT \
        --tensor-model-parallel-size T --epochs 3 --lr 1e-5 [--sift] [--transductive-rounds 1] --predict OUT
    ... --multitask CB,RTE,COPA --data-dir DIR [--pdr] --save MT; then --task CB --load MT   # MT-DNN, 2 stages
    WORLD_SIZE=16 python finetune_superglue.py [same flags] --dry-run   # check the layout, read nothing
    python finetune_superglue.py score --task CB --data-file val.jsonl --predictions OUT/CB.jsonl
    python finetune_superglue.py bundle --predictions-dir OUT --output submission.zip
    python finetune_superglue.py zero-shot --task T --data-dir DIR --load CKPT --predict OUT   # UniMC, no training
"""
import argparse
import sys

from megatron_vega.errors import exit_on_input_error
from megatron_vega.superglue.scoring import add_subcommands

SUBCOMMANDS = ("score", "bundle")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "zero-shot":
        from megatron_vega.finetune.zero_shot import zero_shot
        with exit_on_input_error():
            return zero_shot(argv[1:])
    if argv and argv[0] in SUBCOMMANDS:
        parser = argparse.ArgumentParser(prog="finetune_superglue.py", allow_abbrev=False,
                                         description="Score and package SuperGLUE predictions.")
        add_subcommands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        with exit_on_input_error():
            return args.func(args)
    from megatron_vega.finetune.arguments import build_parser, finetune_run
    args = build_parser(__doc__).parse_args(argv)
    with exit_on_input_error():
        run = finetune_run(args)
        run.validate()  # before the slow imports: a bad flag fails at once
        if args.dry_run:
            from megatron_vega.config import world_size
            from megatron_vega.finetune.dry_run import dry_run
            dry_run(run, world_size())
            return 0
        if run.multitask.multitask:
            from megatron_vega.finetune.multitask_run import finetune_multitask as finetune
        else:
            from megatron_vega.finetune.run import finetune
        finetune(run)
    return 0


if __name__ == "__main__":  # the guard matters: dist_checkpointing starts spawn-context helper processes
    sys.exit(main())
