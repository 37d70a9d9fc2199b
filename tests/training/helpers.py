"""A tiny run configuration and a worker that trains it and records the per-step losses."""
import json
from dataclasses import replace

import torch.distributed as dist

from megatron_vega.config import CheckpointConfig, LoggingConfig, ParallelConfig, TrainConfig, model_preset
from megatron_vega.data.config import DataConfig
from megatron_vega.training.arguments import RunConfig


# lr 5e-4: at 2e-3 Adam amplifies summation-order rounding (pipeline stages add the tied-embedding and
# relative-table grads in another order) to ~1.5e-5 relative by step 6; at 5e-4 layouts agree within 3e-6.
def tiny_run(tp=1, pp=1, vp=None, dropout=0.0, iters=8, save=None, load=None, save_interval=None,
             distributed_optimizer=False, global_batch=8, lr=5e-4, **train) -> RunConfig:
    return RunConfig(
        model=model_preset("tiny", num_layers=4, hidden_dropout=dropout, attention_dropout=dropout),
        parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                num_layers_per_virtual_pipeline_stage=vp,
                                use_distributed_optimizer=distributed_optimizer),
        train=TrainConfig(micro_batch_size=2, global_batch_size=global_batch, train_iters=iters, lr=lr,
                          lr_warmup_iters=2, seed=5, exit_on_signal=False, **train),
        checkpoint=CheckpointConfig(save=save, load=load, save_interval=save_interval, overwrite=True),
        logging=LoggingConfig(log_interval=1, peak_tflops=1.0),
        data=DataConfig(mock_data=True, seq_length=32))


def train_and_record(rank, world, run: RunConfig, out_file: str | None = None, forward_step=None):
    """Train `run` on mock data; the last rank writes {iteration: loss} to out_file."""
    from megatron_vega.objectives.pretrain import pretrain
    history = pretrain(run) if forward_step is None else _train_with(run, forward_step)
    if out_file and rank == world - 1:
        with open(out_file, "w") as f:
            json.dump({str(i): loss for i, loss in history}, f)
    return history


def _train_with(run, forward_step):
    """MLM with another forward step (a test's wrapper around the MLM one)."""
    from megatron_vega.data.tokenizer import vocabulary
    from megatron_vega.objectives.mlm import MaskedLM
    from megatron_vega.objectives.pretrain import build_trainer

    class Wrapped(MaskedLM):
        def forward_step(self, data_iterator, model):
            return forward_step(data_iterator, model)

    objective = Wrapped(run)
    train_ds, _ = objective.datasets(vocabulary(run))
    return build_trainer(run, objective).train(train_ds)


def with_train(run: RunConfig, **changes) -> RunConfig:
    return replace(run, train=replace(run.train, **changes))


def train_and_record_layout(rank, world, run: RunConfig, out_file: str) -> None:
    """Train `run` on mock data; the last rank writes what must not depend on the layout: per-step losses and
    grad norms, each parameter's weight-decay multiplier (by global name) and the parameter count."""
    from megatron_vega.data.mlm_dataset import build_mlm_datasets
    from megatron_vega.data.tokenizer import vocabulary
    from megatron_vega.objectives.pretrain import build_trainer
    train_ds, _, _ = build_mlm_datasets(run.data, vocabulary(run), run.train.seed)
    trainer = build_trainer(run)
    grad_norms = {}
    step = trainer.train_step

    def recording_step(dataset):  # the norm megatron-core's optimizer returns (and clipped with) at each step
        losses, grad_norm, updated = step(dataset)
        grad_norms[str(trainer.iteration)] = grad_norm
        return losses, grad_norm, updated

    trainer.train_step = recording_step
    history = trainer.train(train_ds)
    facts = {"weight_decay": _weight_decay_by_name(trainer), "parameters": _count_parameters_once(trainer.chunks)}
    gathered = [None] * world
    dist.all_gather_object(gathered, facts)
    if rank == world - 1:
        weight_decay: dict[str, list[float]] = {}
        for f in gathered:
            for name, wd in f["weight_decay"].items():
                weight_decay[name] = sorted(set(weight_decay.get(name, []) + wd))
        with open(out_file, "w") as f:
            json.dump({"loss": {str(i): loss for i, loss in history}, "grad_norm": grad_norms,
                       "weight_decay": weight_decay, "parameters": sum(g["parameters"] for g in gathered)}, f)


def _weight_decay_by_name(trainer) -> dict[str, list[float]]:
    """Global parameter name -> the wd_mult of the optimizer group(s) holding this rank's copies of it."""
    from megatron_vega.model.weights import global_name
    names = {id(p): global_name(m, n) for m in trainer.chunks for n, p in m.named_parameters()}
    out: dict[str, list[float]] = {}
    for opt in getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer]):
        # The distributed optimizer's groups hold shards; model_fp32_groups holds the model parameters behind them.
        model_groups = getattr(opt, "model_fp32_groups", None) or [g["params"] for g in opt.optimizer.param_groups]
        for group, params in zip(opt.optimizer.param_groups, model_groups):
            for p in params:
                out[names[id(p)]] = sorted(set(out.get(names[id(p)], []) + [group["wd_mult"]]))
    return out


def _count_parameters_once(chunks) -> int:
    """This rank's share of the model's parameters under megatron-core's own rule for the grad norm (copies
    tagged ``shared`` and tensor-parallel replicas left out), on data-parallel rank 0 only: the sum over all
    ranks is the model's size on any layout."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared
    if parallel_state.get_data_parallel_rank() != 0:
        return 0
    return sum(p.numel() for m in chunks for p in m.parameters()
               if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p))
