"""The training loop on megatron-core: pipeline schedules (1F1B / interleaved), DDP, the (distributed) optimizer
with loss scaling, the LR schedule and dist_checkpointing. The same code runs on CPU/gloo and GPU/NCCL.

What is trained is the objective's (objectives/base.py): the trainer builds, wraps, optimizes (one optimizer over
every chunk of every model), checkpoints and loads the models it names, and asks it for batches, steps, FLOPs and
validation metrics. It imports no objective."""
import signal
from dataclasses import asdict

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_vega import runtime
from megatron_vega.data.sampler import check_batch_sizes, check_interleaved_microbatches
from megatron_vega.errors import VegaInputError
from megatron_vega.model.build import DTYPES, build_model, transformer_config, unwrap
from megatron_vega.model.weights import init_weights
from megatron_vega.ops import kernels
from megatron_vega.training import checkpointing, resume
from megatron_vega.training.batches import microbatches
from megatron_vega.training.log import TrainingLog
from megatron_vega.training.optimizer import lr_scheduler, megatron_optimizer


def print_last(*args) -> None:
    """Print on the last rank (a last pipeline stage, where the losses are)."""
    if dist.get_rank() == dist.get_world_size() - 1:
        print(*args, flush=True)


class Trainer:
    def __init__(self, run, objective):
        """run: a RunConfig; objective: an objectives.base.Objective of that run."""
        self.run, self.objective = run, objective
        model_cfg, par, tr = run.model, run.parallel, run.train
        ck = run.checkpoint
        if ck.save:  # before any process group or model exists: fail fast and cheaply
            checkpointing.check_save_dir(ck.save, ck.load, ck.overwrite)
        self.load_iteration = resume.checkpoint_to_load(ck.load, ck.save, ck.ckpt_step) if ck.load else None
        if self.load_iteration is not None and not (ck.finetune or ck.no_load_optim):
            saved = checkpointing.read_extra(ck.load, self.load_iteration)
            if saved.get("has_optimizer", True):
                resume.check_optimizer_state(saved.get("config", {}), tr.precision, par.use_distributed_optimizer,
                                             ck.load)
        _, world = runtime.init_distributed()
        self.dp = par.validate(model_cfg, world)
        self.global_batch = tr.global_batch_size or tr.micro_batch_size * self.dp
        check_batch_sizes(self.global_batch, tr.micro_batch_size, self.dp)
        if par.num_layers_per_virtual_pipeline_stage is not None:
            check_interleaved_microbatches(self.global_batch, tr.micro_batch_size, self.dp,
                                           par.pipeline_model_parallel_size)
        if par.sequence_parallel and run.data.seq_length % par.tensor_model_parallel_size:
            raise VegaInputError("--seq-length", "must divide by the tensor-parallel size with --sequence-parallel")
        runtime.init_model_parallel(par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                                    par.virtual_stages(model_cfg), seed=tr.seed)
        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=par.overlap_grad_reduce,
                                            use_distributed_optimizer=par.use_distributed_optimizer)
        # name -> this rank's DDP-wrapped chunks of that model; the main model (first) is self.model, self.tc
        self.models: dict[str, list[DistributedDataParallel]] = {}
        configs = []
        for spec in objective.models():
            tc = transformer_config(spec.config, par, tr.precision)
            chunks = build_model(spec.config, tc, recompute=par.recompute, heads=spec.heads, name=spec.name)
            init_weights(chunks, tr.seed)
            objective.prepare_model(spec.name, chunks, {n: [unwrap(m) for m in c] for n, c in self.models.items()})
            self.models[spec.name] = [DistributedDataParallel(tc, ddp, m, disable_bucketing=i > 0)
                                      for i, m in enumerate(chunks)]
            configs.append(tc)
        self.model, self.tc = next(iter(self.models.values())), configs[0]
        all_chunks = [m for chunks in self.models.values() for m in chunks]
        self.optimizer = megatron_optimizer(tr, all_chunks, par.use_distributed_optimizer)
        decay = tr.lr_decay_iters or tr.train_iters
        warmup = int(tr.lr_warmup_fraction * decay) if tr.lr_warmup_fraction is not None else tr.lr_warmup_iters
        self.scheduler = lr_scheduler(self.optimizer, tr, train_steps=tr.train_iters, decay_steps=decay,
                                      warmup_steps=warmup, decay_style=tr.lr_decay_style)
        for tc, chunks in zip(configs, self.models.values(), strict=True):  # each model's schedules read its own config
            tc.finalize_model_grads_func = finalize_model_grads
            tc.grad_scale_func = self.optimizer.scale_loss
            if par.overlap_grad_reduce:
                sync = [m.no_sync for m in chunks]
                tc.no_sync_func = sync[0] if len(sync) == 1 else sync
        self.iteration = self.consumed_samples = self.skipped = 0
        self.stop_requested = False
        self.flops_per_token = objective.flops_per_token()
        self.rng_restored = False
        self._load()

    @property
    def chunks(self):
        """The main model's chunks (unwrapped)."""
        return [unwrap(m) for m in self.model]

    @property
    def all_chunks(self):
        """Every model's chunks (unwrapped): what checkpoints hold."""
        return [unwrap(m) for chunks in self.models.values() for m in chunks]

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        ck = self.run.checkpoint
        if not ck.load:
            return
        if self.load_iteration is None:
            print_last(f"no checkpoint under {ck.load} yet (it is also --save): starting from scratch")
            return
        weights_only = ck.finetune or ck.no_load_optim
        flags_schedule = resume.schedule_of(self.scheduler)
        extra = checkpointing.load(ck.load, self.all_chunks, self.optimizer, self.scheduler,
                                   with_optimizer=not weights_only, with_rng=not (ck.no_load_rng or ck.finetune),
                                   iteration=self.load_iteration, fresh=self.objective.fresh_if_missing)
        notes = []
        if extra["fresh"]:
            notes.append(f"{len(extra['fresh'])} tensors not in it start fresh: "
                         + ", ".join(sorted({key.split(".")[0] + ".*" for key in extra["fresh"]})))
        self.rng_restored = extra["rng_restored"]
        if extra["optimizer_restored"]:
            changed = resume.reconcile_schedule(self.scheduler, flags_schedule, ck.override_opt_param_scheduler,
                                                ck.use_checkpoint_opt_param_scheduler, ck.load)
            if changed:
                kept = "flags" if ck.override_opt_param_scheduler else "checkpoint"
                notes.append(f"schedule from the {kept} ({'; '.join(changed)})")
        else:
            # The mixed-precision optimizer's fp32 main parameters were copied from the initial weights when it was
            # built; without this its first step would write them back over the loaded model.
            self.optimizer.reload_model_params()
            notes.append("weights only: new optimizer state" + ("" if ck.finetune else ", schedule and data order"))
        if not ck.finetune and extra["optimizer_restored"]:  # a weights-only checkpoint starts a new run
            self.iteration, self.consumed_samples = extra["iteration"], extra["consumed_samples"]
            self.skipped = extra.get("skipped", 0)
        if not extra["rng_restored"]:
            notes.append("RNG states not restored: " + ("layout changed" if extra["layout_changed"] else
                                                        "not asked" if ck.no_load_rng or ck.finetune else
                                                        "the checkpoint holds none"))
        print_last(f"loaded {ck.load} at iteration {extra['iteration']}"
                   + (f" ({'; '.join(notes)})" if notes else ""))

    def save(self, with_rng: bool = True) -> None:
        extra = {"iteration": self.iteration, "consumed_samples": self.consumed_samples, "skipped": self.skipped,
                 "config": asdict(self.run)}
        path = checkpointing.save(self.run.checkpoint.save, self.iteration, self.all_chunks, self.optimizer,
                                  self.scheduler, extra, with_rng=with_rng)
        print_last(f"saved checkpoint {path}")

    # -- steps ---------------------------------------------------------------------------------------------------
    def run_schedule(self, dataset, consumed: int, forward_only: bool, forward_step=None, model=None) -> list[dict]:
        """One megatron-core schedule over the global batch starting at sample `consumed`: forward_step (default
        the objective's) on `model` (a list of chunks; default the main model, or another model's, or a frozen
        copy). Returns the last stage's loss dicts, one per micro-batch (empty elsewhere)."""
        tr = self.run.train
        model = model or self.model
        iterators = [microbatches(dataset, consumed, self.global_batch, tr.micro_batch_size,
                                  self.objective.host_batch) for _ in model]
        return get_forward_backward_func()(
            forward_step_func=forward_step or self.objective.forward_step,
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=model if len(model) > 1 else model[0],
            num_microbatches=self.global_batch // (tr.micro_batch_size * self.dp),
            seq_length=self.run.data.seq_length, micro_batch_size=tr.micro_batch_size, forward_only=forward_only)

    @staticmethod
    def _mean_losses(outputs) -> dict[str, torch.Tensor]:
        """Micro-batch losses (last stage) averaged, then averaged over data-parallel ranks. Stays on device."""
        if not outputs:
            return {}
        out = {}
        for key in outputs[0]:
            value = torch.stack([o[key] for o in outputs]).mean()
            dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
            out[key] = value / parallel_state.get_data_parallel_world_size()
        return out

    def train_step(self, dataset) -> tuple[dict[str, torch.Tensor], float | None, bool]:
        self.objective.before_step(self, dataset)
        for chunks in self.models.values():
            for m in chunks:
                m.zero_grad_buffer()
        self.optimizer.zero_grad()
        outputs = self.objective.training_pass(self, dataset)
        updated, grad_norm, _ = self.optimizer.step()
        if updated:
            self.scheduler.step(increment=1)
        else:
            self.skipped += 1
        self.iteration += 1
        self.consumed_samples += self.global_batch
        return self._mean_losses(outputs), grad_norm, updated

    @torch.no_grad()
    def evaluate(self, dataset) -> dict[str, float]:
        """The objective's validation metrics, averaged over the first eval batches."""
        self._set_training(False)
        totals: dict[str, float] = {}
        for i in range(self.run.train.eval_iters):
            outputs = self.objective.validation_pass(self, dataset, i * self.global_batch)
            for k, v in self._mean_losses(outputs).items():
                totals[k] = totals.get(k, 0.0) + v.item() / self.run.train.eval_iters
        self._set_training(True)
        return totals

    def _set_training(self, mode: bool) -> None:
        for chunks in self.models.values():
            for m in chunks:
                m.train(mode)

    # -- loop ----------------------------------------------------------------------------------------------------
    def _on_sigterm(self, *_):
        self.stop_requested = True

    def _agree_to_stop(self) -> bool:
        flag = torch.tensor([float(self.stop_requested)], device=runtime.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def train(self, train_ds, valid_ds=None) -> list[tuple[int, float]]:
        """Train to --train-iters; returns the logged (iteration, loss) pairs of the last stage."""
        tr, ck, lg = self.run.train, self.run.checkpoint, self.run.logging
        if tr.exit_on_signal:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        peak = lg.peak_tflops or runtime.gemm_peak_tflops(DTYPES[tr.precision])
        log = TrainingLog(tr.train_iters, self.flops_per_token, dist.get_world_size(), peak, lg.tensorboard_dir,
                          dist.get_rank() == dist.get_world_size() - 1)
        history = []
        if dist.get_rank() == 0:
            print(kernels.describe(), flush=True)
        self._set_training(True)
        while self.iteration < tr.train_iters:
            losses, grad_norm, updated = self.train_step(train_ds)
            log.step(self.global_batch * self.run.data.seq_length)
            if self.iteration % lg.log_interval == 0:
                loss = losses["lm loss"].item() if "lm loss" in losses else None
                extra = {k: v.item() for k, v in losses.items() if k != "lm loss"}
                if loss is not None:
                    history.append((self.iteration, loss))
                print_last(log.line(self.iteration, self.consumed_samples, self.optimizer.param_groups[0]["lr"],
                                    loss, grad_norm, self.optimizer.get_loss_scale().item(), self.skipped, extra))
            if not updated:
                print_last(f"iteration {self.iteration}: step skipped (inf/NaN in gradients), loss scale lowered "
                           f"to {self.optimizer.get_loss_scale().item():g}")
            if valid_ds is not None and tr.eval_interval and self.iteration % tr.eval_interval == 0:
                print_last(f"validation at iteration {self.iteration}: "
                           + ", ".join(f"{k} {v:.6f}" for k, v in self.evaluate(valid_ds).items()))
            stopping = tr.exit_on_signal and self._agree_to_stop()
            if ck.save and (stopping or (ck.save_interval and self.iteration % ck.save_interval == 0)):
                self.save()
            if stopping:
                print_last(f"SIGTERM: checkpoint saved at iteration {self.iteration}, exiting")
                return history
        if ck.save and not (ck.save_interval and self.iteration % ck.save_interval == 0):
            self.save()
        return history
