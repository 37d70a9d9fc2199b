import argparse

import numpy as np
import pytest

from megatron_vega.cli import add_dataclass_flags, apply_flags
from megatron_vega.data.config import DataConfig, parse_data_path, parse_split, split_ranges
from megatron_vega.data.corpus import open_indexed_dataset
from megatron_vega.data.masking import choose_whole_words, mask_block, mask_positions, sample_rng
from megatron_vega.data.mlm_dataset import BlockTable, blend_pattern, build_mlm_datasets
from megatron_vega.data.sampler import MicroBatchSampler, collate, global_batch_indices, rank_microbatch_indices
from megatron_vega.data.tokenizer import SyntheticVocab
from megatron_vega.errors import VegaInputError
from tests.data.conftest import mock_mlm_dataset, write_corpus

VOCAB = SyntheticVocab(200, word_start=np.arange(200) % 3 == 0)  # ids 0 mod 3 start words: 2-3 token words
SEQ = 32


def random_documents(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 200, size=rng.integers(1, 90)) for _ in range(count)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    a = write_corpus(root / "a", random_documents(300, seed=1), sequences_per_document=2)
    b = write_corpus(root / "b", random_documents(100, seed=2))
    return a, b


def config(paths, **kwargs):
    return DataConfig(data_path=list(paths), seq_length=SEQ, **kwargs)


def test_blocks_pack_the_document_stream(corpora):
    dataset = open_indexed_dataset(corpora[0])
    table = BlockTable(dataset, SEQ, VOCAB)
    docs = [np.concatenate([dataset[s] for s in range(dataset.document_indices[d], dataset.document_indices[d + 1])])
            for d in range(len(dataset.document_indices) - 1)]
    stream = np.concatenate([np.append(d, VOCAB.sep_id) for d in docs])
    assert table.num_blocks == -(-len(stream) // (SEQ - 2))
    blocks = [table.block(b) for b in range(table.num_blocks)]
    assert all(len(b) == SEQ and b[0] == VOCAB.cls_id for b in blocks)
    content = [b[1:][b[1:] != VOCAB.pad_id][:-1] for b in blocks]  # drop [CLS], padding and the closing [SEP]
    assert np.array_equal(np.concatenate(content), stream)
    assert (blocks[-1] == VOCAB.pad_id).any() and not any((b == VOCAB.pad_id).any() for b in blocks[:-1])


def test_splits_are_contiguous_and_block_ids_global(corpora):
    train, valid, test = build_mlm_datasets(config(corpora, split="80,15,5"), VOCAB, seed=3)
    ids = [set(d.block_ids.tolist()) for d in (train, valid, test)]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    sizes = [BlockTable(open_indexed_dataset(p), SEQ, VOCAB).num_blocks for p in corpora]
    assert set().union(*ids) == set(range(sum(sizes)))  # corpus b's ids follow corpus a's
    assert split_ranges(10, parse_split("949,50,1")) == [(0, 10), (10, 10), (10, 10)]  # Megatron's rounding
    assert split_ranges(1000, parse_split("949,50,1")) == [(0, 949), (949, 999), (999, 1000)]


def test_same_seed_block_epoch_same_sample_in_two_builds(corpora):
    first = build_mlm_datasets(config(corpora), VOCAB, seed=11)[0]
    second = build_mlm_datasets(config(corpora), VOCAB, seed=11)[0]
    for i in (0, 1, 17, 5000, 123457):
        a, b = first[i], second[i]
        assert all(np.array_equal(a[k], b[k]) for k in a)
    other_seed = build_mlm_datasets(config(corpora), VOCAB, seed=12)[0]
    assert not np.array_equal(first[0]["tokens"], other_seed.sample_for_block(int(first[0]["block_id"]))["tokens"]) \
        or not np.array_equal(first[1]["tokens"], other_seed.sample_for_block(int(first[1]["block_id"]))["tokens"])


def test_data_parallel_slicing_does_not_change_samples(corpora):
    dataset = build_mlm_datasets(config(corpora), VOCAB, seed=5)[0]

    def global_batches(dp_size, micro, steps=3):
        per_rank = [iter(MicroBatchSampler(0, 8, micro, r, dp_size)) for r in range(dp_size)]
        batches = []
        for _ in range(steps):
            steps = 8 // (micro * dp_size)
            indices = sorted(i for r in range(dp_size) for _ in range(steps) for i in next(per_rank[r]))
            batches.append(collate([dataset[i] for i in indices]))
        return batches

    for one, two in zip(global_batches(1, 4), global_batches(2, 2)):
        assert all(np.array_equal(one[k], two[k]) for k in one)
    assert rank_microbatch_indices(16, 8, 2, 1, 2).tolist() == [[18, 19], [22, 23]]
    with pytest.raises(VegaInputError, match="--global-batch-size"):
        rank_microbatch_indices(0, 10, 4, 0, 2)


def test_resume_continues_with_identical_samples(corpora):
    dataset = build_mlm_datasets(config(corpora), VOCAB, seed=5)[0]
    uninterrupted = [b for _, b in zip(range(10), MicroBatchSampler(0, 4, 2, 0, 1))]
    resumed = [b for _, b in zip(range(4), MicroBatchSampler(12, 4, 2, 0, 1))]  # after 3 global batches
    assert resumed == uninterrupted[6:]
    restarted = build_mlm_datasets(config(corpora), VOCAB, seed=5)[0]
    assert all(np.array_equal(dataset[i]["tokens"], restarted[i]["tokens"]) for i in resumed[0])
    assert global_batch_indices(12, 4).tolist() == [12, 13, 14, 15]


def test_epochs_visit_every_block_once_in_a_seeded_order(corpora):
    dataset = build_mlm_datasets(config(corpora[:1]), VOCAB, seed=5)[0]
    n = len(dataset)
    first, second = ([dataset.locate(i)[2] for i in range(e * n, (e + 1) * n)] for e in (0, 1))
    assert sorted(first) == sorted(second) == sorted(dataset.block_ids.tolist())
    assert first != second and {dataset.locate(i)[1] for i in range(n, 2 * n)} == {1}


def test_blending_follows_weights(corpora):
    pattern, rank, counts = blend_pattern([0.3, 0.7])
    assert counts.tolist() == [3, 7] and pattern.tolist() == [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    assert [rank[r] for r in range(10) if pattern[r] == 0] == [0, 1, 2]
    train = build_mlm_datasets(config([" 0.3", corpora[0], "0.7", corpora[1]]), VOCAB, seed=1)[0]
    parts = np.array([train.locate(i)[0] for i in range(10_000)])
    assert (parts == 1).mean() == pytest.approx(0.7, abs=1e-3)
    assert parse_data_path(["a", "b"]) == (["a", "b"], None)
    with pytest.raises(VegaInputError, match="--data-path"):
        parse_data_path(["0.5", "a", "b"])


def test_whole_word_masking_keeps_words_whole_and_ratio(corpora):
    dataset = mock_mlm_dataset(10_000, 64, VOCAB, seed=9, whole_word_masking=True)
    scored = total = 0
    for i in range(10_000):
        sample = dataset[i]
        labels, chosen = sample["labels"], sample["loss_mask"] > 0
        candidates = ~VOCAB.is_special[labels]
        starts = candidates & (VOCAB.word_start[labels] | ~np.concatenate([[False], candidates[:-1]]))
        first_of_word = np.flatnonzero(starts)[np.cumsum(starts) - 1]  # each position's word start
        assert np.array_equal(chosen[candidates], chosen[first_of_word][candidates])  # words never split
        scored += chosen.sum()
        total += candidates.sum()
    assert abs(scored / total - 0.15) < 0.005


def test_random_masking_ratio_and_80_10_10():
    dataset = mock_mlm_dataset(10_000, 64, VOCAB, seed=4)
    chosen = total = masked = kept = 0
    for i in range(10_000):
        s = dataset[i]
        scored = s["loss_mask"] > 0
        chosen += scored.sum()
        total += (~VOCAB.is_special[s["labels"]]).sum()
        masked += (s["tokens"][scored] == VOCAB.mask_id).sum()
        kept += (s["tokens"][scored] == s["labels"][scored]).sum()
        assert not VOCAB.is_special[s["labels"][scored]].any()
        assert np.array_equal(s["tokens"][~scored], s["labels"][~scored])
    assert abs(chosen / total - 0.15) < 0.005
    assert masked / chosen == pytest.approx(0.8, abs=0.01) and kept / chosen == pytest.approx(0.1 + 0.1 / 195, abs=0.01)


def test_override_masks_exactly_the_given_positions(corpora):
    blocks = {3: np.array([1, 5, 9]), 4: np.array([], dtype=np.int64)}
    train, valid, _ = build_mlm_datasets(config(corpora, split="90,10,0"), VOCAB, seed=2, mask_override=blocks)
    s = train.sample_for_block(3, epoch=7)
    assert np.flatnonzero(s["loss_mask"]).tolist() == [1, 5, 9]
    assert (s["tokens"][[1, 5, 9]] == VOCAB.mask_id).all()
    assert np.array_equal(np.delete(s["tokens"], [1, 5, 9]), np.delete(s["labels"], [1, 5, 9]))
    for fallback in (train.sample_for_block(4), train.sample_for_block(5)):  # empty or absent: random 15 %
        assert 0 < fallback["loss_mask"].sum() < SEQ
    assert valid.mask_override is None
    with pytest.raises(ValueError):
        mask_positions(np.zeros(SEQ, dtype=np.int64), np.array([SEQ]), VOCAB.mask_id)


def test_unmasked_mode_for_self_questioning(corpora):
    train = build_mlm_datasets(config(corpora), VOCAB, seed=2, unmasked=True)[0]
    for i in range(50):
        s = train[i]
        assert np.array_equal(s["tokens"], s["labels"])
        assert np.array_equal(s["loss_mask"], s["padding_mask"].astype(np.float32))


def test_sample_format_and_mock_determinism():
    a = mock_mlm_dataset(100, SEQ, VOCAB, seed=1)
    b = mock_mlm_dataset(100, SEQ, VOCAB, seed=1)
    sample = a[42]
    assert {k: (v.dtype.name, v.shape) for k, v in sample.items()} == {
        "tokens": ("int64", (SEQ,)), "labels": ("int64", (SEQ,)), "loss_mask": ("float32", (SEQ,)),
        "padding_mask": ("int64", (SEQ,)), "block_id": ("int64", ())}
    assert all(np.array_equal(sample[k], b[42][k]) for k in sample)
    assert np.array_equal(sample["padding_mask"], (sample["labels"] != VOCAB.pad_id).astype(np.int64))
    mock_train = build_mlm_datasets(DataConfig(mock_data=True, seq_length=SEQ), VOCAB, seed=1)[0]
    assert mock_train[0]["tokens"].shape == (SEQ,)


def test_masking_is_a_pure_function_of_seed_block_epoch():
    block = mock_mlm_dataset(1, SEQ, VOCAB, seed=0).parts[0].table.block(0)
    options = dict(mask_prob=0.15, random_token_prob=0.1, leave_unmasked_prob=0.1, whole_word=False,
                   random_pool=np.arange(5, 200))
    one = mask_block(block, sample_rng(1, 7, 0), VOCAB, **options)
    two = mask_block(block, sample_rng(1, 7, 0), VOCAB, **options)
    assert all(np.array_equal(x, y) for x, y in zip(one, two))
    assert not np.array_equal(one[1], mask_block(block, sample_rng(1, 7, 1), VOCAB, **options)[1])
    no_words = choose_whole_words(sample_rng(0, 0, 0), np.zeros(4, bool), np.ones(4, bool), 0.15)
    assert not no_words.any()


def test_config_flags_and_validation():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_dataclass_flags(parser, DataConfig)
    args = parser.parse_args(["--data-path", "0.3", "a", "0.7", "b", "--seq-length", "128", "--whole-word-masking",
                              "--split", "98,2,0", "--mask-prob", "0.2"])
    cfg = apply_flags(DataConfig(), args)
    assert (cfg.data_path, cfg.seq_length, cfg.whole_word_masking, cfg.mask_prob) == (["0.3", "a", "0.7", "b"],
                                                                                      128, True, 0.2)
    cfg.validate()
    for bad, flag in [(DataConfig(), "--data-path"), (DataConfig(mock_data=True, split="a,b"), "--split"),
                      (DataConfig(mock_data=True, mask_prob=1.5), "--mask-prob"),
                      (DataConfig(mock_data=True, seq_length=2), "--seq-length")]:
        with pytest.raises(VegaInputError) as err:
            bad.validate()
        assert err.value.where == flag


def test_mined_positions_never_mask_specials_or_padding():
    block = np.array([VOCAB.cls_id, 50, 60, VOCAB.sep_id, 70, VOCAB.pad_id])
    options = dict(mask_prob=0.15, random_token_prob=0.1, leave_unmasked_prob=0.1, whole_word=False,
                   random_pool=np.arange(5, 200))
    tokens, scored = mask_block(block, sample_rng(1, 0, 0), VOCAB, positions=np.array([0, 2, 3, 5]), **options)
    assert np.flatnonzero(scored).tolist() == [2] and tokens[2] == VOCAB.mask_id
    assert tokens[[0, 3, 5]].tolist() == [VOCAB.cls_id, VOCAB.sep_id, VOCAB.pad_id]
