"""The nGiE convolution under a structured attention mask (model/layer.py's masked_conv1d): with every pair
allowed it is F.conv1d; under a causal mask output i does not read inputs after i."""
import torch
import torch.nn.functional as F

from megatron_vega.model.layer import masked_conv1d


def test_masked_conv_equals_conv1d_when_all_allowed_and_hides_what_the_mask_hides():
    gen = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(2, 8, 10, generator=gen), torch.randn(8, 8, 3, generator=gen),
                       torch.randn(8, generator=gen))
    everything = torch.ones(2, 10, 10, dtype=torch.bool)
    assert torch.allclose(masked_conv1d(x, weight, bias, everything), F.conv1d(x, weight, bias, padding=1),
                          atol=1e-5)
    causal = torch.tril(everything)
    later = x.clone()
    later[:, :, 5:] += 1.0
    difference = masked_conv1d(later, weight, bias, causal) - masked_conv1d(x, weight, bias, causal)
    assert difference[:, :, :5].abs().max() == 0 and difference[:, :, 5:].abs().max() > 0.1
