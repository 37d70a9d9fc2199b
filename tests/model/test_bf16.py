"""bf16 on CPU: finite MLM loss within 2 % of fp32 on the tiny model."""
import torch
import torch.nn.functional as F

from megatron_vega.model.attention_inputs import AttentionInputs
from tests.model.helpers import hf_reference, padded_batch, tiny_config, vega_from_hf


def test_bf16_loss_close_to_fp32(single_process):
    cfg = tiny_config()
    model = vega_from_hf(cfg, hf_reference(cfg)).eval()
    ids, mask = padded_batch(cfg.vocab_size, batch=4, seq=128)
    labels = torch.where(mask.bool(), ids, -100).t().flatten()

    def loss():
        logits = model(ids, AttentionInputs(mask)).flatten(0, 1)
        return F.cross_entropy(logits, labels, ignore_index=-100)

    with torch.no_grad():
        fp32 = loss()
        model.to(torch.bfloat16)
        bf16 = loss()
    print(f"fp32 loss {fp32:.5f}, bf16 loss {bf16:.5f}, relative {abs(bf16 - fp32) / fp32:.2e}")
    assert torch.isfinite(bf16) and abs(bf16 - fp32) / fp32 < 0.02
