"""Every attention core against the dense fp32 reference of the formula, on every mask and position form, with
padding and with deep-prompt prefixes: outputs and gradients (q, k, v, position tables, prefix keys/values)."""
import math

import pytest
import torch

from megatron_vega.errors import VegaInputError
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.ops.attention import BACKENDS, CORES, select_core
from tests.ops.attention import reference
from tests.ops.attention.cases import CASES, CPU_CORES, B, S, case, padding

H, D, P = 2, 4, 3


def _leaves(prefix_len: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen).requires_grad_()  # noqa: E731
    fused = rand(S, B, H, 3, D)  # the module's layout: q, k, v are views of the fused projection
    pos_key, pos_query = rand(H, 2 * reference.SPAN, D), rand(H, 2 * reference.SPAN, D)
    prefix = (rand(B, H, prefix_len, D), rand(B, H, prefix_len, D)) if prefix_len else None
    return fused, pos_key, pos_query, prefix


@pytest.mark.parametrize("prefix_len", [0, P], ids=["no-prompt", "deep-prompt"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("core_name", CPU_CORES)
def test_core_matches_the_dense_reference(core_name, name, prefix_len):
    fields = case(name)
    fused, pos_key, pos_query, prefix = _leaves(prefix_len)
    leaves = [fused, pos_key, pos_query, *(prefix or ())]
    scale = 1 / math.sqrt(3 * D)
    qkv = fused.permute(3, 1, 2, 0, 4)
    inputs = AttentionInputs(padding(), **fields, prefix=None if prefix is None else [prefix])
    index = inputs.relative_index(reference.BUCKETS, reference.MAX_POSITION, reference.SPAN)
    assert index.dim() == (3 if "position_ids" in fields else 2)
    out = CORES[core_name](qkv, *(prefix or (None, None)), pos_key * scale, pos_query * scale, index,
                           inputs.mask_bias(torch.float32), 0.0, scale)

    positions = fields.get("position_ids", torch.arange(S).expand(B, S))
    allowed = reference.allowed_pairs(padding(), fields.get("prefix_lengths"), fields.get("block_ids"),
                                      fields.get("attention_mask"))
    ref = reference.attention(qkv[0], qkv[1], qkv[2], pos_key, pos_query, reference.bucketed_index(positions),
                              allowed, scale, prefix)
    grad = torch.randn(B, H, S, D, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for g, r in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


def test_the_masks_restrict_attention():
    """Each mask form changes what a real query sees (else the reference comparison would prove little)."""
    base = AttentionInputs(padding()).mask_bias(torch.float32)
    for name in ("dense", "prefix_causal", "blocks"):
        assert not torch.equal(AttentionInputs(padding(), **case(name)).mask_bias(torch.float32), base), name


def test_auto_picks_the_cpu_core_in_fp32_on_cpu_and_bad_choices_are_one_line_errors():
    assert select_core("auto", "cpu", torch.float32).name == "cpu"
    assert select_core("sdpa", "cpu", torch.float32).name == "sdpa"
    assert set(BACKENDS) == {"auto", *CORES}
    for backend, device in (("cpu", "cuda"), ("triton", "cpu")):
        with pytest.raises(VegaInputError) as err:
            select_core(backend, device, torch.float32)
        assert err.value.where == "--attention-backend" and "\n" not in str(err.value)


def test_the_flag_offers_the_registry():
    from megatron_vega.config import ATTENTION_BACKENDS, model_preset
    assert set(ATTENTION_BACKENDS) == set(BACKENDS)
    with pytest.raises(VegaInputError, match="--attention-backend: unknown core 'nope'"):
        model_preset("tiny", attention_backend="nope")


def test_the_kernel_line_names_the_core_a_model_was_built_with():
    from megatron_vega.ops import kernels
    select_core("sdpa", "cpu", torch.float32)
    assert "core sdpa" in kernels.describe()
