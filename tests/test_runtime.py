"""runtime.in_fp32: bf16 matrix products computed in fp32 where the CPU has no bf16 matrix units."""
import pytest
import torch
import torch.nn.functional as F

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig, model_preset
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model, transformer_config
from megatron_vega.model.weights import init_weights


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(runtime, "low_precision_gemm_native", lambda *_: False)


def _leaves(*shapes, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def test_linear_in_fp32_is_the_fp32_product_rounded_and_keeps_the_saved_inputs_low(emulated):
    x, w, b = _leaves((6, 32), (32, 16), (16,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = runtime.in_fp32(F.linear, x.t().contiguous().t(), w.t(), b)  # a view argument too
    assert saved == []  # in_fp32's own hooks took the saves: the outer pair saw nothing
    ref = F.linear(x.float(), w.float().t(), b.float())
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))
    grad = torch.randn(6, 16)
    out.backward(grad.to(torch.bfloat16))
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    ref.backward(grad.to(torch.bfloat16).float())
    assert gx.dtype == torch.bfloat16 and torch.equal(gx, x.grad) and torch.equal(gw, w.grad)


def test_row_block_linear_equals_in_fp32_without_an_fp32_copy_of_the_weight(emulated, monkeypatch):
    """The MLM head's product with the vocabulary table, by blocks of rows (3 rows per block here)."""
    monkeypatch.setattr(runtime._RowBlockLinear, "BLOCK_BYTES", 3 * 4 * 32)
    x, w = _leaves((2, 5, 32), (11, 32))
    out = runtime.linear_in_fp32(x, w)
    grad = torch.randn(2, 5, 11).to(torch.bfloat16)
    out.backward(grad)
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    ref = runtime.in_fp32(F.linear, x, w)
    ref.backward(grad)
    assert out.dtype == gx.dtype == gw.dtype == torch.bfloat16
    for a, b in ((out, ref), (gx, x.grad), (gw, w.grad)):
        torch.testing.assert_close(a, b)  # (exact here; blocked sums may differ by a bf16 rounding elsewhere)


def test_saved_upcasts_are_mapped_back_to_the_low_precision_originals(emulated):
    x, w = _leaves((8, 4), (4, 4))
    packed = []

    class Record(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b.t())
            return a @ b

        @staticmethod
        def backward(ctx, g):
            a, bt = ctx.saved_tensors
            packed.extend([a.dtype, bt.dtype, bt.shape])
            return g @ bt, a.t() @ g
    out = runtime.in_fp32(Record.apply, x, w)
    out.sum().backward()
    assert packed == [torch.float32, torch.float32, (4, 4)]  # unpacked in fp32
    torch.testing.assert_close(w.grad.float(), (x.float().t() @ torch.ones(8, 4)), rtol=1e-2, atol=1e-2)
    # the saved view b.t() is a view of w itself, not of an fp32 copy: changing w in place is then refused
    out = runtime.in_fp32(Record.apply, x, w)
    with torch.no_grad():
        w.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_fp32_and_native_inputs_pass_through(monkeypatch):
    x, w = _leaves((3, 4), (5, 4), dtype=torch.float32)
    assert torch.equal(runtime.in_fp32(F.linear, x, w), F.linear(x, w))
    monkeypatch.setattr(runtime, "low_precision_gemm_native", lambda *_: True)
    xb, wb = x.detach().bfloat16(), w.detach().bfloat16()
    assert torch.equal(runtime.in_fp32(F.linear, xb, wb), F.linear(xb, wb))


def test_bf16_model_in_fp32_matches_the_emulated_bf16_model(monkeypatch):
    """The tiny bf16 model (parallel linears, attention core, conv, MLM head) with and without the fp32 route:
    the same loss and grads to bf16 rounding."""
    runtime.init_distributed()
    results = []
    for native in (True, False):
        monkeypatch.setattr(runtime, "low_precision_gemm_native", lambda *_, native=native: native)
        runtime.init_model_parallel(1, 1, seed=5)
        cfg = model_preset("tiny", hidden_dropout=0.0, attention_dropout=0.0)
        [model] = build_model(cfg, transformer_config(cfg, ParallelConfig(), "bf16"))
        init_weights([model], 5)
        tokens = torch.randint(5, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
        logits = model(tokens, AttentionInputs(torch.ones_like(tokens)))
        loss = torch.logsumexp(logits.float(), -1).mean()
        loss.backward()
        results.append((loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (loss_native, grads_native), (loss_fp32, grads_fp32) = results
    assert loss_fp32 == pytest.approx(loss_native, rel=2e-2)
    for name, g in grads_native.items():
        torch.testing.assert_close(grads_fp32[name], g, rtol=0.1, atol=0.05 * g.abs().max().item() + 1e-3,
                                   msg=name)


def test_in_place_change_of_a_saved_input_is_refused(emulated):
    x, w = _leaves((3, 4), (5, 4))
    h = x * 1  # a non-leaf that can be changed in place
    out = runtime.in_fp32(F.linear, h, w)
    with torch.no_grad():
        h.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()
