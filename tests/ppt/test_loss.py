"""PPT's slot loss equals hand-computed values on a toy batch (both kinds), and the slot logits are the MLM logits at
the [MASK] of each row with a shallow prompt (shifted) and a deep one (not shifted)."""
import math

import pytest
import torch

from megatron_vega.ppt.data import PPTExample
from megatron_vega.ppt.model import collate, ppt_loss, slot_logits

LOGITS = [[0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 0.25, 3.0],
          [1.0, 0.0, -2.0, 0.5, 0.0, 2.5, -1.0, 0.0]]
LABEL_IDS = (3, 5, 6)


def _lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_ppt_loss_by_hand(world_of_one):
    from megatron_vega import runtime
    runtime.init_model_parallel(1, 1, seed=1)
    # row 0: gold class 1 (id 5) among 3 candidates; row 1: gold class 0 (id 3) among the first 2 only
    batch = {"label": torch.tensor([1, 0]), "candidates": torch.tensor([[True, True, True], [True, True, False]])}
    logits = torch.tensor(LOGITS)
    loss, counts = ppt_loss(logits, batch, LABEL_IDS, "vocab")
    vocab = ((_lse(LOGITS[0]) - LOGITS[0][5]) + (_lse(LOGITS[1]) - LOGITS[1][3])) / 2
    assert loss.item() == pytest.approx(vocab, rel=1e-6)
    loss, counts = ppt_loss(logits, batch, LABEL_IDS, "verbalizer")
    row0 = _lse([LOGITS[0][i] for i in LABEL_IDS]) - LOGITS[0][5]
    row1 = _lse([LOGITS[1][3], LOGITS[1][5]]) - LOGITS[1][3]  # id 6 is not a candidate of row 1
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # candidate argmax: row 0 -> id 6 (class 2, wrong), row 1 -> id 5 (class 1, wrong); vocabulary argmax: 7, 5
    assert counts["correct"].item() == 0 and counts["vocab_correct"].item() == 0
    batch["label"] = torch.tensor([2, 1])
    _, counts = ppt_loss(logits, batch, LABEL_IDS, "verbalizer")
    assert counts["correct"].item() == 2 and counts["vocab_correct"].item() == 1


@pytest.mark.parametrize("prompt_type", ["shallow", "deep"])
def test_slot_logits_read_the_mask(world_of_one, spm_path, prompt_type):
    from megatron_vega import runtime
    from megatron_vega.config import ParallelConfig, model_preset
    from megatron_vega.data.tokenizer import VegaTokenizer
    from megatron_vega.model.build import build_model, transformer_config
    from megatron_vega.model.heads import MLM_HEAD
    from megatron_vega.model.weights import init_weights
    from megatron_vega.ppt.config import PretrainPromptConfig
    from megatron_vega.prompt.store import build_prompt

    runtime.init_model_parallel(1, 1, seed=2)
    tokenizer = VegaTokenizer(spm_path)
    cfg = model_preset("tiny", vocab_size=tokenizer.vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
    [encoder] = build_model(cfg, transformer_config(cfg, ParallelConfig()), heads=(MLM_HEAD,))
    init_weights([encoder], 2)
    encoder.eval()
    ppt = PretrainPromptConfig(prompt_type=prompt_type, prompt_length=4, prompt_init="random", prompt_dropout=0.0)
    prompt = build_prompt(ppt, cfg, encoder, tokenizer, 2).eval()
    examples = [PPTExample((1, 50, 60, tokenizer.mask_id, 70, 2), 3, 0, 2),
                PPTExample((1, 80, tokenizer.mask_id, 2), 2, 1, 2)]
    batch = collate(examples, tokenizer.pad_id, (79, 315))
    with torch.no_grad():
        read = slot_logits(prompt, encoder, batch)
        full, _ = prompt(encoder, batch)  # [s, b, V]: every position
    shift = 4 if prompt_type == "shallow" else 0
    torch.testing.assert_close(read, torch.stack([full[3 + shift, 0], full[2 + shift, 1]]), rtol=1e-5, atol=1e-5)
