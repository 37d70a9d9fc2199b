"""The fused layer pieces (ops/fused_layer.py) under the interpreter against torch: bias + exact GELU and dropout +
residual + LayerNorm, outputs and every gradient, in fp32 (tight) and fp16, with a row length that is not a power
of two; and the layer with them forced on equals the layer without."""
import pytest
import torch
import torch.nn.functional as F

import tests.ops.triton.interpreter  # noqa: F401  (sets TRITON_INTERPRET before the kernels are defined)
from megatron_vega.ops import fused_layer

ROWS, N = 37, 48  # rows span several backward programs (16 rows each); N pads to a 64-wide block


def _rand(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).requires_grad_()


def _grads(out, leaves, seed=9):
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return torch.autograd.grad(out, leaves, grad)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_bias_gelu_is_exact_gelu(dtype, atol):
    x, bias = _rand(3, ROWS, N, dtype=dtype, seed=1) * 2, _rand(N, dtype=dtype, seed=2)
    x = x.detach().requires_grad_()
    out, ref = fused_layer.bias_gelu(x, bias), F.gelu(x.float() + bias.float())
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=atol)
    for got, want in zip(_grads(out, [x, bias]), _grads(ref, [x, bias])):
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol * (ROWS if got.dim() == 1 else 1))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_dropout_add_layer_norm_matches_torch(dtype, atol, p):
    x, res = _rand(ROWS, N, dtype=dtype, seed=1), _rand(ROWS, N, dtype=dtype, seed=2)
    norm = torch.nn.LayerNorm(N, eps=1e-7).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(N) + 0.5)
        norm.bias.copy_(torch.randn(N) * 0.1)
    leaves = [x, res, norm.weight, norm.bias]
    out = fused_layer.dropout_add_layer_norm(x, res, norm, p, training=True, seed=77)
    keep = torch.ones(ROWS, N)
    if p:
        mask = torch.empty(ROWS, N, dtype=torch.int8)
        fused_layer._kernels().dropout_keep[(ROWS,)](mask, N, p, 77, BLOCK=64)
        keep = mask.float() / (1 - p)
        assert 0.5 < mask.float().mean() < 0.95
    ref = F.layer_norm(res.float() + x.float() * keep, (N,), norm.weight.float(), norm.bias.float(), 1e-7)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=atol)
    for name, got, want in zip(("x", "residual", "weight", "bias"), _grads(out, leaves), _grads(ref, leaves)):
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol * (4 if got.dim() == 1 else 1),
                                   msg=name)


def test_the_layer_with_the_fused_pieces_equals_the_torch_layer(single_process, monkeypatch):
    from megatron_vega.config import ParallelConfig
    from megatron_vega.model.build import transformer_config
    from megatron_vega.model.layer import VegaLayer
    from tests.model.helpers import tiny_config
    cfg = tiny_config()
    torch.manual_seed(0)
    layer = VegaLayer(cfg, transformer_config(cfg, ParallelConfig()), torch.nn.init.normal_).eval()
    s, b = 5, 2
    hidden = torch.randn(s, b, cfg.hidden_size, requires_grad=True)
    rel = torch.randn(2 * cfg.attention_span, cfg.hidden_size)
    index = torch.randint(0, 2 * cfg.attention_span, (s, s))
    params = [hidden, *layer.parameters()]
    outs = []
    for on in (False, True):
        monkeypatch.setattr(fused_layer, "enabled", lambda x, on=on: on)
        out = layer(hidden, rel, index, None)
        outs.append((out, torch.autograd.grad(out.sum(), params)))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=1e-5)
    for got, want in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
