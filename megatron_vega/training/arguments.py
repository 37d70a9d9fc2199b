"""The run configuration and its Megatron-named flags, generated from the config dataclasses.

The objective's flags are not here: training knows no objective. ``objectives/arguments.py`` builds on this parser
(``--objective`` with the registry's choices, one group per objective) and puts the chosen objective's config, an
``ObjectiveSettings`` subclass, in ``RunConfig.objective``.
"""
import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from megatron_vega.cli import add_dataclass_flags, apply_flags, option
from megatron_vega.config import (
    PRESETS,
    CheckpointConfig,
    LoggingConfig,
    ModelConfig,
    ParallelConfig,
    TrainConfig,
    model_preset,
)
from megatron_vega.data.config import DataConfig
from megatron_vega.data.tokenizer import VegaTokenizer
from megatron_vega.training.checkpoint_args import resolve_model


@dataclass
class ObjectiveSettings:
    """The chosen objective's name; each objective's config dataclass extends it with its own flags, so that
    ``asdict(run)["objective"]`` (saved in every checkpoint) is one flat dict: {"objective": name, **its flags}."""
    objective: str = option("mlm", "Training objective (the registered objectives).")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=lambda: model_preset("base"))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)


_GROUPS = {"model": ModelConfig, "parallel": ParallelConfig, "train": TrainConfig, "checkpoint": CheckpointConfig,
           "logging": LoggingConfig, "data": DataConfig}


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-preset", default=None, choices=list(PRESETS),
                        help="Named model size (base when left out); the size flags below override single fields. "
                             "With --load of a checkpoint the model is the checkpoint's, and an explicit preset "
                             "must agree with it.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Validate the configuration against WORLD_SIZE, print parameters, memory per rank "
                             "and FLOPs per token, and exit (no data, no GPU, one process).")
    for name, cls in _GROUPS.items():
        add_dataclass_flags(parser, cls, title=name)
    return parser


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run the flags describe; its model is the checkpoint's when --load holds one (checkpoint_args.py)."""
    explicit = {f.name: getattr(args, f.name) for f in fields(ModelConfig) if getattr(args, f.name, None) is not None}
    parts = {name: apply_flags(cls(), args) for name, cls in _GROUPS.items() if name != "model"}
    model = resolve_model(args.model_preset, explicit, parts["checkpoint"],
                          read_tokenizer(parts["data"].tokenizer_model, args.dry_run), args.dry_run)
    return RunConfig(model=model, **parts)


def read_tokenizer(path: str | None, dry_run: bool) -> VegaTokenizer | None:
    """The --tokenizer-model, which sizes the vocabulary. A dry run checks a layout before the data exists: a
    missing tokenizer there leaves the vocabulary to --vocab-size or the preset, and says so."""
    if path is None:
        return None
    if dry_run and not Path(path).exists():
        print(f"note: {path} does not exist yet: the vocabulary below is --vocab-size's or the preset's, the run "
              f"takes the tokenizer's size")
        return None
    return VegaTokenizer(path)
