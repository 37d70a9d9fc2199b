"""The optimizer and its schedule, for pretraining and fine-tuning alike: megatron-core's optimizer (mixed
precision, distributed optimizer, gradient clipping, loss scaling) over torch's fused AdamW kernel when
megatron-core falls back to torch's Adam, and megatron-core's OptimizerParamScheduler."""
import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_vega.model.build import DTYPES

# fp16's dynamic loss-scaling settings: pretraining's TrainConfig has them, fine-tuning (no fp16) keeps the defaults.
_LOSS_SCALING = ("loss_scale", "initial_loss_scale", "min_loss_scale", "loss_scale_window", "hysteresis")


def optimizer_config(cfg, use_distributed_optimizer: bool = False) -> OptimizerConfig:
    """megatron-core's Adam settings from a run's settings, named alike in pretraining (TrainConfig) and
    fine-tuning (OptimConfig): lr, min_lr, weight_decay, adam_beta1, adam_beta2, adam_eps, clip_grad and
    ``precision`` (fp32 / bf16 / fp16); fp16's loss-scaling fields where the config has them."""
    scaling = {name: getattr(cfg, name) for name in _LOSS_SCALING if hasattr(cfg, name)}
    return OptimizerConfig(
        optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps, clip_grad=cfg.clip_grad, bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16", params_dtype=DTYPES[cfg.precision],
        use_distributed_optimizer=use_distributed_optimizer, **scaling)


def megatron_optimizer(cfg, model_chunks: list, use_distributed_optimizer: bool = False, config_overrides=None):
    """Adam with decoupled weight decay (``optimizer_config``) over the DDP-wrapped ``model_chunks``;
    ``config_overrides``: megatron-core's {ParamKey: ParamGroupOverride} (e.g. a second learning rate)."""
    return build_optimizer(optimizer_config(cfg, use_distributed_optimizer), model_chunks, config_overrides)


def lr_scheduler(optimizer, cfg, train_steps: int, decay_steps: int, warmup_steps: int,
                 decay_style: str = "linear") -> OptimizerParamScheduler:
    """Learning rate from 0 up to ``cfg.lr`` over ``warmup_steps`` (linear), then down to ``cfg.min_lr`` at
    ``decay_steps`` (``decay_style``); a constant ``cfg.weight_decay`` over the run's ``train_steps``. One
    scheduler step per optimizer step that updated the weights."""
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=cfg.lr, min_lr=cfg.min_lr, lr_warmup_steps=warmup_steps,
        lr_decay_steps=decay_steps, lr_decay_style=decay_style, start_wd=cfg.weight_decay, end_wd=cfg.weight_decay,
        wd_incr_steps=train_steps, wd_incr_style="constant")


def build_optimizer(config: OptimizerConfig, model_chunks: list, config_overrides=None):
    optimizer = get_megatron_optimizer(config, model_chunks, config_overrides=config_overrides)
    use_fused_torch_adam(optimizer)
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        _keep_bucket_padding_in_gathered_state(opt)
    return optimizer


def _keep_bucket_padding_in_gathered_state(opt) -> None:
    """megatron-core 0.16's distributed optimizer gathers its state for a 'fully_reshardable' checkpoint into one
    tensor per buffer with the padding between buckets removed, then slices it with each parameter's offset in
    the padded buffer: every parameter after the first bucket's end is saved shifted (its warning "param range
    exceeds unpadded buffer ... data corruption", megatron-core issue 504). A pipeline's last stage always has a
    second bucket (the tied output embedding). Put the padding back so the offsets hold."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    if not isinstance(opt, DistributedOptimizer):
        return
    gather = opt.get_parameter_state_dp_zero

    def gather_padded(*args, **kwargs):
        state = gather(*args, **kwargs)
        if state is None:
            return None
        for gbuf_idx, buffer in enumerate(opt.buffers):
            for world in state[gbuf_idx].values():
                for key, tensor in world.items():
                    if not isinstance(tensor, torch.Tensor):
                        continue
                    padded, offset = tensor.new_zeros(buffer.numel), 0
                    for bucket in buffer.buckets:
                        padded[bucket.offset:bucket.offset + bucket.numel_unpadded] = \
                            tensor[offset:offset + bucket.numel_unpadded]
                        offset += bucket.numel_unpadded
                    world[key] = padded
        return state
    opt.get_parameter_state_dp_zero = gather_padded


def torch_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron-core optimizer (a ChainedOptimizer holds several)."""
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [o.optimizer for o in chained if getattr(o, "optimizer", None) is not None]


def use_fused_torch_adam(optimizer) -> None:
    """Without TE or apex megatron-core builds torch.optim.Adam(W) with torch's default implementation, which on
    CPU is the per-tensor loop (foreach is CUDA-only by default, and on CPU slower still). torch's fused kernel
    (CPU and CUDA) makes one pass per tensor, faster than the loop (BENCHMARKS.md, "Optimizer").
    TE's and apex's FusedAdam are left as they are."""
    for opt in torch_optimizers(optimizer):
        if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
            for group in opt.param_groups:
                group["fused"], group["foreach"] = True, False


def allocate_adam_state(optimizer) -> None:
    """Give every parameter of the torch Adam(W) inside ``optimizer`` a zero state (step, both moments), as a
    checkpoint load needs: megatron-core's distributed optimizer reads the step from existing state when it
    builds the state dict to load into (an AssertionError before the first step without TE/apex). The values
    are overwritten by the load; no parameter changes."""
    for opt in torch_optimizers(optimizer):
        if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
            continue
        for group in opt.param_groups:
            for p in group["params"]:
                if not opt.state[p]:
                    opt.state[p] = {"step": torch.zeros((), device=p.device), "exp_avg": torch.zeros_like(p),
                                    "exp_avg_sq": torch.zeros_like(p)}


def load_optimizer_state(optimizer, state) -> None:
    """optimizer.load_state_dict(state) for a state loaded through dist_checkpointing. megatron-core 0.16's
    distributed optimizer cannot load its own 'fully_reshardable' parameter state into torch's Adam: it copies
    every entry of the per-parameter state, the 'step' counter included, from a source that has none (KeyError).
    The counter is set from the parameter groups anyway, so it is held aside while the tensors are copied, and
    each parameter gets a counter of its own (megatron-core gives them one shared tensor, which torch's fused and
    foreach kernels then advance once per parameter at every step)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    parts = [state] if len(chained) == 1 else [state[i] for i in range(len(chained))]
    for opt, part in zip(chained, parts):
        if not (isinstance(opt, DistributedOptimizer) and part.get("param_state_sharding_type") == "fully_reshardable"):
            opt.load_state_dict(part)
            continue
        part = dict(part)
        param_state = part.pop("param_state")
        part.pop("param_state_sharding_type")
        opt.load_state_dict(part)
        steps = {p: s.pop("step") for p, s in opt.optimizer.state.items() if "step" in s}
        try:
            opt.load_parameter_state_from_fully_reshardable(param_state)
        finally:
            for p, step in steps.items():
                opt.optimizer.state[p]["step"] = step.to(p.device, copy=True)
