"""The CPU dropout (ops.dropout): mask statistics, the autograd of x * keep / (1 - p'), determinism in the seed."""
import math

import pytest
import torch

from megatron_vega.ops.dropout import draw_keep, dropout, dropout_grid


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_keeps_each_element_with_probability_1_minus_p(p):
    """Every one of the four 15-bit lanes of a 64-bit draw is uniform; masks seeded apart are not copies."""
    threshold, inv = dropout_grid(p)
    assert abs(threshold / 2 ** 15 - p) <= 2 ** -16 and inv == pytest.approx(1 / (1 - threshold / 2 ** 15))
    keep = torch.empty(2, 1 << 20, dtype=torch.uint8)
    draw_keep(keep[0], threshold, seed=5)
    draw_keep(keep[1], threshold, seed=6)
    sigma = math.sqrt(p * (1 - p) / (1 << 18))
    for lane in range(4):
        assert abs(keep[0, lane::4].float().mean().item() - (1 - p)) < 5 * sigma
    assert (keep[0] == keep[1]).float().mean().item() == pytest.approx(p * p + (1 - p) ** 2, abs=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_and_grad_are_the_input_scaled_on_the_kept_elements(dtype):
    x = torch.randn(64, 3, 32).to(dtype).requires_grad_()
    y = dropout(x, 0.25)
    kept = y != 0
    _, inv = dropout_grid(0.25)
    assert y.dtype == dtype and 0.6 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(y[kept], (x[kept].float() * inv).to(dtype))
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, (g.float() * kept * inv).to(dtype))


def test_mask_follows_the_current_generator():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    b = dropout(x, 0.5)
    torch.manual_seed(4)
    assert torch.equal(a, b) and not torch.equal(a, dropout(x, 0.5))


def test_identity_when_not_training_or_p_is_zero_and_all_dropped_at_p_one():
    x = torch.randn(10)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros(10))
