"""One 2-process launch: UniMC on the tiny model at TP=2 and TP=1 (DP=2, both ranks the same batch).

* isolation: with the default mask (--unimc-mask isolated), changing one option's tokens leaves the other options'
  scores unchanged;
* permutation: permuting the options (gold remapped) leaves every option's score unchanged to 1e-5, with either mask;
* the OP and MLM losses equal a naive full-vocabulary computation; losses and head gradients TP=2 = TP=1.
"""
import pytest
import torch

from tests.distributed import spawn

ITEMS = [("What did he do?", "I had to go to the school, and the master was angry with me.",
          ("he went home", "he was angry", "it was the school"), 1),
         ("", "The old man said nothing to me that day.", ("good", "bad"), 0)]


def _scores_and_losses(tp, spm_path, mask):
    import numpy as np
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from megatron_vega import runtime
    from megatron_vega.config import ParallelConfig, model_preset
    from megatron_vega.data.tokenizer import VegaTokenizer
    from megatron_vega.model.build import transformer_config
    from megatron_vega.unimc.layout import NOT_LABELLED, ChoiceItem, TextMasking, UniMCEncoder, collate
    from megatron_vega.unimc.losses import mlm_loss, op_loss, per_option
    from megatron_vega.unimc.model import build_unimc_model

    runtime.init_model_parallel(tp, 1, seed=5)
    tok = VegaTokenizer(spm_path)
    cfg = model_preset("tiny", vocab_size=tok.vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
    yes, no = tok.encode("good")[0], tok.encode("bad")[0]
    model = build_unimc_model(cfg, transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=tp)), 5, yes,
                              mask)
    enc = UniMCEncoder.from_tokenizer(tok, 96)

    def scores(items):
        batch = collate([enc.build(ChoiceItem(q, p, o, g)) for q, p, o, g in items], tok.pad_id, yes, no)
        with torch.no_grad():
            return [s.tolist() for s in per_option(model(batch)["scores"], batch["omask"])]

    q, p, options, gold = ITEMS[0]
    base = scores(ITEMS)
    # other tokens in option 0, no longer than the longest other option (so the shared text keeps its positions)
    changed = scores([(q, p, ("she went out", *options[1:]), gold)])[0]
    assert len(tok.encode("she went out")) <= max(len(tok.encode(o)) for o in options[1:])
    order = (2, 0, 1)
    permuted = scores([(q, p, tuple(options[k] for k in order), order.index(gold))])[0]

    masking = TextMasking(tok.mask_id, tok.vocab_size, tok.is_special)
    batch = collate([enc.build(ChoiceItem(*x)) for x in ITEMS], tok.pad_id, yes, no, masking,
                    np.random.default_rng(3))
    out = model(batch)
    kept = out["lm_logits"].detach().clone()  # megatron-core's CE overwrites its input with the softmax
    op, mlm = op_loss(out["scores"], batch["gold"]), mlm_loss(out["lm_logits"], out["lm_targets"])
    (op + mlm).backward()
    # naive: the whole vocabulary gathered, softmax over each row's options, log-softmax over the vocabulary
    full = gather_from_tensor_model_parallel_region(kept)[:, :cfg.vocab_size]
    hand_mlm = torch.nn.functional.cross_entropy(full, out["lm_targets"])
    rows = per_option(out["scores"].detach(), batch["omask"])
    golds = [g for *_, g in ITEMS]
    hand_op = -sum(torch.log_softmax(s, 0)[g] for s, g in zip(rows, golds)) / len(golds)
    assert op.item() == pytest.approx(hand_op.item(), rel=1e-5)
    assert mlm.item() == pytest.approx(hand_mlm.item(), rel=1e-5)
    assert (batch["lm_labels"] != NOT_LABELLED).sum() > len(batch["omask"])  # text MLM targets are there too
    grad = model.encoder.lm_head.dense.weight.grad.clone()
    return base, changed, permuted, order, (op.item(), mlm.item()), grad


def _check(rank, world, spm_path):
    from megatron_vega.unimc.config import MASKS, UniMCConfig

    default, results = UniMCConfig().unimc_mask, {}
    for mask in sorted(MASKS, key=lambda m: m != default):
        for tp in (2, 1):
            base, changed, permuted, order, losses, grad = _scores_and_losses(tp, spm_path, mask)
            if mask == default:  # the check 1 holds with the flag's default
                assert changed[1:] == pytest.approx(base[0][1:], abs=1e-6), (tp, changed, base[0])
                assert abs(changed[0] - base[0][0]) > 1e-5  # the changed option's own score does move
            assert permuted == pytest.approx([base[0][k] for k in order], abs=1e-5), (mask, tp)
            results[mask, tp] = (base, losses, grad)
        (b2, l2, g2), (b1, l1, g1) = results[mask, 2], results[mask, 1]
        assert l2 == pytest.approx(l1, rel=1e-5) and b2[0] == pytest.approx(b1[0], abs=1e-5)
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6)
    assert results["isolated", 1][0] != results["reference", 1][0]  # the masks differ


@pytest.mark.slow
def test_unimc_isolation_permutation_and_losses_tp2_equal_tp1(shared_data):
    spawn(_check, 2, str(shared_data / "corpus" / "botchan_sp1k.model"))
