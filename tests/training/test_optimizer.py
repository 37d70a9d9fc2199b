"""The optimizer: torch's fused AdamW under megatron-core's wrapper, same updates as the per-tensor loop."""
import pytest
import torch
from megatron.core.optimizer import OptimizerConfig

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig, model_preset
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
        logits = model(tokens, torch.ones_like(tokens))
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
