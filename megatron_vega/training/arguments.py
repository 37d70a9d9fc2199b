"""The run configuration and its Megatron-named flags, generated from the config dataclasses."""
import argparse
from dataclasses import dataclass, field, fields

from megatron_vega.cli import add_dataclass_flags, apply_flags
from megatron_vega.config import (PRESETS, CheckpointConfig, LoggingConfig, ModelConfig, ParallelConfig, TrainConfig,
                                  model_preset)
from megatron_vega.data.config import DataConfig
from megatron_vega.selfevolution.objective import ObjectiveConfig


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=lambda: model_preset("base"))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


_GROUPS = {"model": ModelConfig, "parallel": ParallelConfig, "train": TrainConfig, "checkpoint": CheckpointConfig,
           "logging": LoggingConfig, "data": DataConfig, "objective": ObjectiveConfig}


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-preset", default="base", choices=list(PRESETS),
                        help="Named model size; the size flags below override single fields.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Validate the configuration against WORLD_SIZE, print parameters, memory per rank "
                             "and FLOPs per token, and exit (no data, no GPU, one process).")
    for name, cls in _GROUPS.items():
        add_dataclass_flags(parser, cls, title=name)
    return parser


def run_config(args: argparse.Namespace) -> RunConfig:
    model_overrides = {f.name: getattr(args, f.name) for f in fields(ModelConfig)
                       if getattr(args, f.name, None) is not None}
    parts = {name: apply_flags(cls(), args) for name, cls in _GROUPS.items() if name != "model"}
    return RunConfig(model=model_preset(args.model_preset, **model_overrides), **parts)
