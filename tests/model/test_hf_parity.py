"""Parity with an independent implementation: transformers' DebertaV2ForMaskedLM (docs/hugging_face_conversion.md)."""
import pytest
import torch

from megatron_vega.convert.hf_mapping import to_hf
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.weights import gather_full_state_dict
from tests.model.helpers import hf_reference, padded_batch, tiny_config, vega_from_hf


@pytest.mark.parametrize("overrides", [
    {},  # tiny: shared attention key, 32 buckets < sequence length 72 (log buckets exercised)
    {"share_att_key": False},
    {"position_buckets": 8, "max_position_embeddings": 128},
    {"pos_att_type": "c2p", "share_att_key": False, "conv_kernel_size": 0, "norm_rel_ebd": False},
])
def test_hidden_states_and_logits_match_hf(single_process, overrides):
    cfg = tiny_config(**overrides)
    hf = hf_reference(cfg)
    model = vega_from_hf(cfg, hf).eval()
    ids, mask = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logits = model(ids, AttentionInputs(mask))[..., :cfg.vocab_size].transpose(0, 1)
        input_mask = mask.t().unsqueeze(-1).float()
        hidden = model.encode(model.embed(ids, input_mask), AttentionInputs(mask), input_mask).transpose(0, 1)
    hidden_diff = (hidden - ref.hidden_states[-1]).abs().max().item()
    logit_diff = (logits - ref.logits).abs().max().item()
    print(f"{overrides}: max |hidden diff| {hidden_diff:.2e}, max |logit diff| {logit_diff:.2e}")
    assert hidden_diff <= 1e-5 and logit_diff <= 1e-5  # every position, padding rows included


def test_mapping_back_loads_into_transformers_without_missing_keys(single_process, tmp_path):
    from safetensors.torch import save_file
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    from megatron_vega.convert.hf_mapping import hf_config_dict
    cfg = tiny_config(share_att_key=False)
    hf = hf_reference(cfg)
    state = to_hf(gather_full_state_dict([vega_from_hf(cfg, hf)]), cfg)
    DebertaV2Config(**hf_config_dict(cfg)).save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    loaded, info = DebertaV2ForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, tensor in hf.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_masked_positions_give_the_same_logits_as_the_full_output(single_process):
    cfg = tiny_config()
    model = vega_from_hf(cfg, hf_reference(cfg)).eval()
    ids, mask = padded_batch(cfg.vocab_size)
    positions = torch.tensor([0, 5, 17, 100, 150])  # flat s-major indices into [s*b]
    with torch.no_grad():
        full = model(ids, AttentionInputs(mask)).flatten(0, 1)
        picked = model(ids, AttentionInputs(mask), lm_positions=positions)
    assert torch.allclose(full[positions], picked, atol=1e-6)
