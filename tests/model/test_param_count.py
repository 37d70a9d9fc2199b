"""Parameter counts of every preset equal Hugging Face's for the same config (large models on the meta device)."""
import pytest
import torch

from megatron_vega.config import PRESETS, model_preset
from megatron_vega.convert.hf_mapping import hf_config_dict
from megatron_vega.model.parameter_count import count_parameters


@pytest.mark.parametrize("preset", list(PRESETS))
def test_count_matches_hf(preset):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM
    from transformers.initialization import no_init_weights
    cfg = model_preset(preset)
    with torch.device("meta"), no_init_weights():  # shapes only: vega-6b in fp32 would not fit in memory
        hf = DebertaV2ForMaskedLM(DebertaV2Config(**hf_config_dict(cfg)))
    assert count_parameters(cfg) == sum(p.numel() for p in hf.parameters())


def test_vega_6b_count_is_the_reference_figure():
    assert count_parameters(model_preset("vega-6b")) == 5_427_188_836
