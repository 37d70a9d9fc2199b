"""The optimizer: torch's fused AdamW under megatron-core's wrapper, same updates as the per-tensor loop."""
import pytest
import torch
from megatron.core.optimizer import OptimizerConfig

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig, model_preset
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model, transformer_config
from megatron_vega.model.weights import init_weights
from megatron_vega.training.optimizer import build_optimizer, torch_optimizers


def _step(fused: bool, precision: str):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    runtime.init_distributed()
    runtime.init_model_parallel(1, 1, seed=3)
    cfg = model_preset("tiny")
    tc = transformer_config(cfg, ParallelConfig(), precision)
    [chunk] = build_model(cfg, tc)
    init_weights([chunk], 3)
    model = DistributedDataParallel(tc, DistributedDataParallelConfig(grad_reduce_in_fp32=True), chunk)
    config = OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.01, bf16=precision == "bf16",
                             params_dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    optimizer = build_optimizer(config, [model])
    if not fused:
        for opt in torch_optimizers(optimizer):
            for group in opt.param_groups:
                group["fused"] = False
    tokens = torch.randint(5, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model.zero_grad_buffer()
        optimizer.zero_grad()
        logits = model(tokens, AttentionInputs(torch.ones_like(tokens)))
        logits.float().logsumexp(-1).mean().backward()
        model.finish_grad_sync()
        assert optimizer.step()[0]
    return optimizer, [p.detach().float().clone() for p in chunk.parameters()]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_adam_is_used_and_matches_the_loop(precision):
    optimizer, fused = _step(True, precision)
    groups = [g for opt in torch_optimizers(optimizer) for g in opt.param_groups]
    assert groups and all(g["fused"] for g in groups)
    _, loop = _step(False, precision)
    for a, b in zip(fused, loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flags", [{}, {"bf16": True}, {"fp16": True, "loss_scale": 128.0, "hysteresis": 3},
                                   {"fp16": True, "initial_loss_scale": 2.0 ** 10, "loss_scale_window": 50}])
@pytest.mark.parametrize("distributed", [False, True])
def test_pretraining_settings_give_the_trainers_optimizer_config(flags, distributed):
    from megatron_vega.config import TrainConfig
    from megatron_vega.model.build import DTYPES
    from megatron_vega.training.optimizer import optimizer_config
    tr = TrainConfig(lr=3e-4, min_lr=1e-5, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_eps=1e-8,
                     clip_grad=0.5, **flags)
    expected = OptimizerConfig(  # the construction pretraining's trainer spelled out before the shared builder
        optimizer="adam", lr=tr.lr, min_lr=tr.min_lr, weight_decay=tr.weight_decay, adam_beta1=tr.adam_beta1,
        adam_beta2=tr.adam_beta2, adam_eps=tr.adam_eps, clip_grad=tr.clip_grad, bf16=tr.bf16, fp16=tr.fp16,
        params_dtype=DTYPES[tr.precision], loss_scale=tr.loss_scale, initial_loss_scale=tr.initial_loss_scale,
        min_loss_scale=tr.min_loss_scale, loss_scale_window=tr.loss_scale_window, hysteresis=tr.hysteresis,
        use_distributed_optimizer=distributed)
    assert optimizer_config(tr, distributed) == expected


@pytest.mark.parametrize("bf16", [False, True])
def test_finetuning_settings_give_the_finetuners_optimizer_config(bf16):
    from megatron_vega.finetune.config import OptimConfig
    from megatron_vega.training.optimizer import optimizer_config
    o = OptimConfig(lr=2e-5, min_lr=1e-6, weight_decay=0.02, clip_grad=0.0, bf16=bf16)
    expected = OptimizerConfig(  # what fine-tuning built before the shared builder: no fp16, no loss scaling
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad, bf16=o.bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32)
    assert optimizer_config(o) == expected


def test_lr_scheduler_warms_up_then_decays_to_min_lr():
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_vega.config import TrainConfig
    from megatron_vega.training.optimizer import lr_scheduler

    class Groups:  # what OptimizerParamScheduler reads and writes
        param_groups = [{"lr": 0.0, "weight_decay": 0.0}]

    tr = TrainConfig(lr=1e-3, min_lr=1e-4, weight_decay=0.05)
    scheduler = lr_scheduler(Groups(), tr, train_steps=20, decay_steps=10, warmup_steps=2, decay_style="cosine")
    expected = OptimizerParamScheduler(Groups(), init_lr=0.0, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=2,
                                       lr_decay_steps=10, lr_decay_style="cosine", start_wd=0.05, end_wd=0.05,
                                       wd_incr_steps=20, wd_incr_style="constant")
    assert scheduler.state_dict() == expected.state_dict()
    lrs = []
    for _ in range(12):
        scheduler.step(increment=1)
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
    assert lrs[1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4) and lrs[0] < lrs[1]
