"""The fine-tuning flags, generated from the config dataclasses (``finetune/config.py``)."""
import argparse

from megatron_vega.cli import add_dataclass_flags, apply_flags
from megatron_vega.config import PRESETS
from megatron_vega.errors import VegaInputError
from megatron_vega.finetune import config as robust  # PDR and multi-task groups (docs/pdr_and_multitask.md)
from megatron_vega.finetune.cloze_config import ClozeConfig
from megatron_vega.finetune.config import FinetuneRun, OptimConfig, SiftConfig, TaskConfig, TransductiveConfig
from megatron_vega.prompt.config import PandaConfig, PromptConfig
from megatron_vega.unimc.config import UniMCConfig

_GROUPS = {"task": TaskConfig, "optim": OptimConfig, "sift": SiftConfig, "transductive": TransductiveConfig,
           "prompt": PromptConfig, "panda": PandaConfig, "pdr": robust.PdrConfig,
           "multitask": robust.MultitaskConfig, "unimc": UniMCConfig, "cloze": ClozeConfig}


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune_superglue.py", description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-preset", default=None, choices=list(PRESETS),
                        help="Start from random weights of this size instead of --load (tests, smoke runs).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Validate the flags and the layout against WORLD_SIZE, print it and exit (reads no "
                             "checkpoint or data; one process).")
    for name, cls in _GROUPS.items():
        add_dataclass_flags(parser, cls, title=name)
    return parser


def finetune_run(args: argparse.Namespace) -> FinetuneRun:
    if args.model_preset and args.load:
        raise VegaInputError("--model-preset", "only without --load (the checkpoint defines the model)")
    return FinetuneRun(**{name: apply_flags(cls(), args) for name, cls in _GROUPS.items()},
                       model_preset=args.model_preset)
