"""UniMC's layout against the hand-written table of docs/unimc_and_ppt.md, truncation, verbalizer check, collate."""
import numpy as np
import pytest
import torch

from megatron_vega.errors import VegaInputError
from megatron_vega.unimc.layout import (
    NOT_LABELLED,
    ChoiceItem,
    TextMasking,
    UniMCEncoder,
    capped_lengths,
    collate,
    verbalizer_id,
)

CLS, SEP, MASK, PAD = 1, 2, 4, 0
WORDS = {w: 10 + i for i, w in enumerate("o1a o1b o2a o3a o3b o3c q1 q2 p1 p2 p3".split())}


def encoder(seq_length=64):
    return UniMCEncoder(lambda text: [WORDS[w] for w in text.split()], CLS, SEP, MASK, seq_length)


ITEM = ChoiceItem("q1 q2", "p1 p2 p3", ("o1a o1b", "o2a", "o3a o3b o3c"), label=1)


def test_three_options_match_the_hand_written_table():
    x = encoder().build(ITEM)
    w = WORDS
    assert x.tokens == (CLS, MASK, w["o1a"], w["o1b"], MASK, w["o2a"], MASK, w["o3a"], w["o3b"], w["o3c"], SEP,
                        w["q1"], w["q2"], SEP, w["p1"], w["p2"], w["p3"], SEP)
    assert x.position_ids == (0, 1, 2, 3, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    assert x.block_ids == (0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0)
    assert x.omask == (1, 4, 6) and x.text_start == 11 and x.label == 1


def test_the_mask_rows_of_the_table():
    from megatron_vega.model.attention_inputs import AttentionInputs
    batch = collate([encoder().build(ITEM)], PAD, yes_id=7, no_id=8)
    reference = AttentionInputs(batch["padding_mask"], block_ids=batch["block_ids"], context_sees_blocks=True)
    rows = reference.allowed()[0]
    assert rows[2].nonzero().flatten().tolist() == [0, 1, 2, 3, *range(10, 18)]  # o1a
    assert rows[5].nonzero().flatten().tolist() == [0, 4, 5, *range(10, 18)]  # o2a
    assert all(rows[i].all() for i in (0, *range(10, 18)))  # [CLS], question, passage see everything
    isolated = AttentionInputs(batch["padding_mask"], block_ids=batch["block_ids"]).allowed()[0]
    assert isolated[2].equal(rows[2]) and isolated[0].nonzero().flatten().tolist() == [0, *range(10, 18)]


def test_collate_targets_and_gold():
    b = collate([encoder().build(ITEM), encoder().build(ChoiceItem("", "p1", ("o2a", "o1a"), None))], PAD, 7, 8)
    assert b["omask"].tolist() == [[0, 1], [0, 4], [0, 6], [1, 1], [1, 3]]
    assert b["gold"].tolist() == [4, NOT_LABELLED]
    assert b["lm_labels"][0, [1, 4, 6]].tolist() == [8, 7, 8] and (b["lm_labels"][1] == NOT_LABELLED).all()
    assert b["padding_mask"][1].sum() == 8 and b["tokens"][1, 8:].eq(PAD).all()


def test_truncation_halves_options_then_caps_the_text():
    words = {f"w{i}": 100 + i for i in range(300)}
    enc = UniMCEncoder(lambda t: [words[w] for w in t.split()], CLS, SEP, MASK, 64)
    long = " ".join(f"w{i}" for i in range(40))
    x = enc.build(ChoiceItem(long, long, (long, long), 0))
    assert len(x.tokens) <= 64
    assert x.omask == (1, 12)  # 40 -> 20 -> 10 tokens each: 2 * 11 <= 64 - 32
    assert capped_lengths([5, 50, 30], 40) == [5, 17, 17] and capped_lengths([3, 4], 10) == [3, 4]


def test_verbalizer_must_be_one_piece(shared_data):
    from megatron_vega.data.tokenizer import VegaTokenizer
    tok = VegaTokenizer(shared_data / "corpus" / "botchan_sp1k.model")
    assert verbalizer_id(tok, "good", "--unimc-yes") == tok.encode("good")[0]
    with pytest.raises(VegaInputError, match=r"--unimc-yes: 'yes' is 3 pieces"):
        verbalizer_id(tok, "yes", "--unimc-yes")


def test_text_masking_touches_only_the_text():
    special = np.zeros(50, dtype=bool)
    special[[CLS, SEP, MASK, PAD]] = True
    masking = TextMasking(MASK, 50, special)
    x = encoder().build(ITEM)
    chosen = {}
    for seed in range(200):
        _, targets = masking.apply(list(x.tokens), x.text_start, np.random.default_rng(seed))
        chosen.update(targets)
    assert set(chosen) == {11, 12, 14, 15, 16}  # question and passage tokens, never options or separators
    b = collate([x], PAD, 7, 8, masking, np.random.default_rng(0))
    assert torch.equal(b["lm_labels"][0, [1, 4, 6]], torch.tensor([8, 7, 8]))
