"""Self-evolution stage 1: mine the neglected tokens of every training block with a trained checkpoint.

  torchrun --nproc_per_node N tools/self_questioning.py --load CKPT --data-path PREFIX --tokenizer-model M \\
      --output PATH [--threshold 0.1] [parallel flags as for pretrain_vega.py; the model is the checkpoint's]

Runs the model in eval mode without gradients over the unmasked blocks (the block ids the MLM dataset uses),
computes each token's NLL from the vocab-parallel logits and writes a memory-mapped index block id -> positions.
An interrupted run resumes: finished shards are kept. Special tokens and padding are never mined.

  python tools/self_questioning.py show --index PATH --data-path PREFIX --tokenizer-model M [--blocks N] [--json]

prints the first N blocks of an index as text with the neglected pieces between [[ and ]]; with --json one object
per line: {"block": id, "pieces": [...], "neglected": [positions], "neglected_pieces": [...]}.
"""
import sys
from pathlib import Path

from megatron_vega.cli import add_dataclass_flags, apply_flags
from megatron_vega.config import world_size
from megatron_vega.errors import VegaInputError, exit_on_input_error
from megatron_vega.selfevolution.stage1 import MiningConfig
from megatron_vega.training.arguments import build_parser, run_config


def show_main(argv) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="self_questioning.py show", allow_abbrev=False,
                                     description="Print blocks of a neglected-token index, neglected pieces marked.")
    parser.add_argument("--index", required=True, help="the stage-1 output (--output of the mining run)")
    parser.add_argument("--data-path", nargs="+", required=True, help="the corpora the index was mined from")
    parser.add_argument("--tokenizer-model", required=True, help="the sentencepiece model of those corpora")
    parser.add_argument("--blocks", type=int, default=10, help="how many blocks to print (the index's first ones)")
    parser.add_argument("--json", action="store_true", help="one JSON object per block instead of text")
    args = parser.parse_args(argv)
    from megatron_vega.selfevolution.show import show
    with exit_on_input_error():
        show(args.index, args.data_path, args.tokenizer_model, args.blocks, args.json)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["show"]:  # the subcommand; any other first word is the mining command line as before
        show_main(argv[1:])
        return
    parser = build_parser(__doc__)
    add_dataclass_flags(parser, MiningConfig, title="self-questioning")
    args = parser.parse_args(argv)
    with exit_on_input_error():
        run, mining = run_config(args), apply_flags(MiningConfig(), args)
        run.data.validate()
        if not mining.output:
            raise VegaInputError("--output", "required: where to write the neglected-token index")
        if args.dry_run:
            from megatron_vega.training.dry_run import dry_run
            dry_run(run, world_size())
            return
        if not run.checkpoint.load:
            raise VegaInputError("--load", "required: the trained checkpoint whose neglected tokens to mine")
        if Path(mining.output).exists():
            raise VegaInputError(mining.output, "already exists; stage 1 never overwrites an index")
        from megatron_vega.selfevolution.stage1 import mine
        mine(run, mining)


if __name__ == "__main__":
    main()
