"""pretrain_vega.py's flags: training's (training/arguments.py) plus ``--objective`` with the registered choices
and one group per registered objective, generated from its config dataclass. Objectives registered before
``build_parser`` is called (a user's or a test's module) get their group like the built-in ones."""
import argparse
from dataclasses import fields, replace

from megatron_vega.cli import add_dataclass_flags, apply_flags
from megatron_vega.objectives import registry
from megatron_vega.training import arguments
from megatron_vega.training.arguments import ObjectiveSettings, RunConfig

_BASE = {f.name for f in fields(ObjectiveSettings)}


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = arguments.build_parser(description)
    group = parser.add_argument_group("objective")
    group.add_argument("--objective", default="mlm", choices=registry.choices(),
                       help=f"{fields(ObjectiveSettings)[0].metadata['help']} (default: mlm)")
    added = set(_BASE)
    for name, cls in registry.registered().items():
        if cls.config_class is not ObjectiveSettings:
            # A flag two objectives share (both train a generator: --generator-num-layers) is listed in the first
            # one's group; each objective still takes its own default when the flag is not given (apply_flags).
            add_dataclass_flags(parser, cls.config_class, title=f"objective {name}", skip=added)
            added |= {f.name for f in fields(cls.config_class)}
    return parser


def run_config(args: argparse.Namespace) -> RunConfig:
    run = arguments.run_config(args)
    settings = registry.objective_class(args.objective).config_class(objective=args.objective)
    return replace(run, objective=apply_flags(settings, args))


def objective_config(objective: str = "mlm", **values):
    """The config of objective `objective` with `values` for its fields (a run built in code, not from flags)."""
    return registry.objective_class(objective).config_class(objective=objective, **values)


def build_objective(run: RunConfig):
    """The objective object of a run (its config's ``objective`` names the registered class)."""
    return registry.objective_class(run.objective.objective)(run)


def objective_for_checkpoint(run: RunConfig, saved_objective: dict):
    """The objective of a run restored from a checkpoint's ``asdict(run)``: the saved {"objective": name, ...}
    dict (also the format of checkpoints written before objectives were plug-ins) filled into that objective's
    config class (fields added since take their defaults)."""
    cls = registry.objective_class(saved_objective.get("objective", "mlm"))
    known = {f.name for f in fields(cls.config_class) if f.init}
    return cls(replace(run, objective=cls.config_class(**{k: v for k, v in saved_objective.items() if k in known})))
