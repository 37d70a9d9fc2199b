"""Self-evolution end to end on CPU: tiny MLM pretraining -> stage 1 -> stage 2 at TP=2 x PP=2 on text of the
embedded corpus; stage-1 shards from DP=2 merge to the same index as one replica; the index holds no special token
(``self_questioning.py show --json``); stage 2 masks exactly the mined positions; stage 2 with --fused-loss on
trains as with it off at TP=2 x PP=2 and at TP=1 (DP=2)."""
import json
from dataclasses import replace

import numpy as np
import pytest

from megatron_vega.data.config import DataConfig
from tests.data.conftest import run_tool, write_corpus
from tests.distributed import spawn
from tests.training.helpers import tiny_run


@pytest.fixture(scope="module")
def corpus(embedded_jsonl, spm_model, tmp_path_factory):
    """30 documents of real text, 40 to 120 pieces each: blocks hold [CLS], [SEP], [UNK] and padding."""
    from megatron_vega.data.tokenizer import VegaTokenizer
    tokenizer = VegaTokenizer(spm_model)
    texts = [json.loads(line)["text"] for line in embedded_jsonl.read_text().splitlines()[:30]]
    rng = np.random.default_rng(0)
    docs = [tokenizer.encode(text)[:int(rng.integers(40, 120))] for text in texts]
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs", docs)


def _run(corpus, spm=None, **kwargs):
    run = tiny_run(**kwargs)
    return replace(run, data=DataConfig(data_path=[corpus], tokenizer_model=spm, seq_length=32, split="90,10,0"))


def _mine(run, output):
    # The model has seen 3 steps: every NLL is near ln(1000) = 6.91, so τ there selects about half the tokens.
    from megatron_vega.selfevolution.stage1 import MiningConfig, mine
    mine(run, MiningConfig(output=output, threshold=6.91, blocks_per_shard=8))


def _stage2(corpus, spm, root, fused_loss, save=None, iters=3, **layout):
    from megatron_vega.objectives.arguments import objective_config
    from megatron_vega.objectives.pretrain import pretrain
    se = _run(corpus, spm, iters=iters, load=f"{root}/plm", save=save, **layout)
    se = replace(se, checkpoint=replace(se.checkpoint, finetune=True),
                 objective=objective_config("self-evolution", neglected_tokens=f"{root}/tp2pp2.nidx",
                                            fused_loss=fused_loss))
    return pretrain(se)


def _assert_same_losses(fused, logits):
    """--fused-loss on trains as off: the same losses, step by step (1e-5 relative)."""
    assert [i for i, _ in fused] == [i for i, _ in logits]
    np.testing.assert_allclose([loss for _, loss in fused], [loss for _, loss in logits], rtol=1e-5)


def _tp2pp2_chain(rank, world, corpus, spm, root):
    from megatron_vega.objectives.pretrain import pretrain
    pretrain(_run(corpus, spm, tp=2, pp=2, iters=3, save=f"{root}/plm"))
    _mine(_run(corpus, spm, tp=2, pp=2, load=f"{root}/plm"), f"{root}/tp2pp2.nidx")
    history = _stage2(corpus, spm, root, "off", save=f"{root}/se", tp=2, pp=2)
    fused = _stage2(corpus, spm, root, "on", tp=2, pp=2)
    if rank == world - 1:
        assert len(history) == 3 and all(np.isfinite(loss) for _, loss in history), history
        _assert_same_losses(fused, history)


def _dp2_mining(rank, world, corpus, spm, root):
    _mine(_run(corpus, spm, load=f"{root}/plm"), f"{root}/dp2.nidx")
    fused, logits = (_stage2(corpus, spm, root, mode) for mode in ("on", "off"))  # TP=1 (DP=2)
    if rank == world - 1:
        _assert_same_losses(fused, logits)


@pytest.mark.slow
def test_pretrain_mine_evolve_at_tp2_pp2_and_dp2_shards_merge_identically(corpus, spm_model, tmp_path):
    from megatron_vega.data.tokenizer import VegaTokenizer
    from megatron_vega.selfevolution.neglected_index import NeglectedIndex
    spawn(_tp2pp2_chain, 4, corpus, spm_model, str(tmp_path))
    spawn(_dp2_mining, 2, corpus, spm_model, str(tmp_path))
    a, b = NeglectedIndex(tmp_path / "tp2pp2.nidx"), NeglectedIndex(tmp_path / "dp2.nidx")
    print("stage 1 stats:", {k: v for k, v in a.stats().items() if k != "histogram"})
    assert len(a) == len(b) > 0 and list(a) == list(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "se" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"

    # What was mined, as a user looks at it: every block of the index, and not one special piece or pad among the
    # neglected ones (the MLM objective never trains specials, so they have the highest NLL of a small model).
    shown = run_tool("self_questioning.py", "show", "--index", tmp_path / "tp2pp2.nidx", "--data-path", corpus,
                     "--tokenizer-model", spm_model, "--blocks", len(a), "--json")
    assert shown.returncode == 0, shown.stderr
    blocks = [json.loads(line) for line in shown.stdout.splitlines()]
    vocab = VegaTokenizer(spm_model)
    specials = {vocab.id_to_piece(i) for i in vocab.special_ids}
    assert [blk["block"] for blk in blocks] == list(a)
    assert sum(len(blk["neglected"]) for blk in blocks) == a.stats()["positions"] > 0
    assert all(blk["pieces"][0] == "[CLS]" and "[SEP]" in blk["pieces"] for blk in blocks)
    for blk in blocks:
        assert blk["neglected"] == a[blk["block"]].tolist()
        assert blk["neglected_pieces"] == [blk["pieces"][p] for p in blk["neglected"]]
        assert not specials & set(blk["neglected_pieces"]), blk


def test_stage2_masks_exactly_the_mined_positions(corpus, tmp_path):
    from megatron_vega.data.mlm_dataset import build_mlm_datasets
    from megatron_vega.data.tokenizer import SyntheticVocab
    from megatron_vega.selfevolution.neglected_index import NeglectedIndex, write_index
    write_index(tmp_path / "idx", {0: np.array([3, 7, 8]), 2: np.array([1])}, 64, seq_length=32)
    index = NeglectedIndex(tmp_path / "idx")
    vocab = SyntheticVocab(1000)
    train, _, _ = build_mlm_datasets(DataConfig(data_path=[corpus], seq_length=32, split="90,10,0"), vocab, 1,
                                     mask_override=index)
    for block_id, expected in [(0, [3, 7, 8]), (2, [1])]:
        sample = train.sample_for_block(block_id)
        assert np.flatnonzero(sample["loss_mask"]).tolist() == expected
        assert (sample["tokens"][expected] == vocab.mask_id).all()
    fallback = train.sample_for_block(1)  # no mined positions: random 15 % masking
    assert 0 < fallback["loss_mask"].sum() <= 0.3 * 32
