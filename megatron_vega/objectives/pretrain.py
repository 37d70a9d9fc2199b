"""Pretraining with the run's objective: its data, a trainer over its models, its hook, the training loop."""
from megatron_vega.data.tokenizer import vocabulary
from megatron_vega.objectives.arguments import build_objective
from megatron_vega.training.trainer import Trainer


def build_trainer(run, objective=None) -> Trainer:
    """A trainer of `run` for its objective (built from the run unless given), the objective attached to it."""
    objective = objective or build_objective(run)
    trainer = Trainer(run, objective)
    objective.attach(trainer)
    return trainer


def pretrain(run) -> list[tuple[int, float]]:
    """Train `run` to --train-iters; the logged (iteration, loss) pairs of the last stage."""
    objective = build_objective(run)
    train_ds, valid_ds = objective.datasets(vocabulary(run))  # checks the objective's inputs before any model
    return build_trainer(run, objective).train(train_ds, valid_ds)
