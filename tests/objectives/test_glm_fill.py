"""Blank filling (objectives/glm_fill.py) with a scripted stand-in for the model: what each step feeds it (Part A,
[sop] at the blank's position 1, position 2 counting along the span, the prefix length) and how fills end."""
import torch

from megatron_vega.data.glm_blanks import GLMSpecialIds
from megatron_vega.objectives.glm_fill import encode_with_blanks, fill_blanks, filled_text

IDS = GLMSpecialIds(mask=4, sop=96, eop=97, smask=98, gmask=99, pad=0)


class ScriptedModel:
    """Emits 50, 51, … and [eop] after two tokens of each span; the most likely token is always a banned one (7)."""

    def __init__(self):
        self.calls = []

    def __call__(self, tokens, attention, lm_positions):
        self.calls.append((tokens[0].tolist(), attention.position_ids[0].tolist(),
                           attention.block_position_ids[0].tolist(), int(attention.prefix_lengths[0])))
        step = attention.block_position_ids[0, -1].item()  # 1 at [sop]
        logits = torch.full((1, 100), -5.0)
        logits[0, 7] = 10.0
        logits[0, IDS.eop if step == 3 else 50 + len(self.calls)] = 5.0
        return logits


class Words:
    cls_id, sep_id = 1, 2

    def encode(self, text):
        return [10 + len(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


def test_blanks_filled_left_to_right_with_glm_positions():
    part_a, blanks = encode_with_blanks(Words(), "a bb [MASK] ccc [sMASK]", IDS)
    assert part_a == [1, 11, 12, 4, 13, 98, 2] and blanks == [3, 5]
    model = ScriptedModel()
    fills = fill_blanks(model, part_a, blanks, IDS, banned=[7])
    assert fills == [[51, 52], [54, 55]]
    tokens, pos1, pos2, prefix = model.calls[-1]  # the last step of the second blank
    assert tokens == part_a + [96, 51, 52, 96, 54, 55] and prefix == len(part_a)
    assert pos1 == list(range(7)) + [3, 3, 3, 5, 5, 5] and pos2 == [0] * 7 + [1, 2, 3, 1, 2, 3]
    assert filled_text(Words(), part_a, blanks, fills) == "w11 w12 [w51 w52] w13 [w54 w55]"


def test_sampling_follows_the_temperature():
    part_a, blanks = encode_with_blanks(Words(), "a [MASK]", IDS)
    generator = torch.Generator().manual_seed(0)
    cold = fill_blanks(ScriptedModel(), part_a, blanks, IDS, banned=[7], temperature=1e-3, generator=generator)
    assert cold == [[51, 52]]  # near zero temperature: the greedy fill
    hot = [fill_blanks(ScriptedModel(), part_a, blanks, IDS, banned=[7], max_tokens=2, temperature=100.0,
                       generator=generator)[0] for _ in range(5)]
    assert any(fill != [51, 52] for fill in hot)  # a flat distribution wanders
