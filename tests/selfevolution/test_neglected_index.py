"""Stage-1 selection rules and the memory-mapped neglected-token index: round trip, shard merging, corruption."""
import pickle

import numpy as np
import pytest

from megatron_vega.data.tokenizer import SyntheticVocab
from megatron_vega.errors import VegaInputError
from megatron_vega.selfevolution import NeglectedIndex, ShardWriter, merge, select_neglected, shard_paths, write_index
from megatron_vega.selfevolution.neglected_index import candidates
from tests.data.conftest import mock_mlm_dataset

SEQ = 16
RULE = dict(seq_length=SEQ, criterion="nll", threshold=0.1)


def test_nll_threshold_selects_exactly_the_tokens_above_tau():
    nll = np.array([[0.05, 0.2, 0.1, 3.0, 0.11, 9.0],
                    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    real = np.array([[1, 1, 1, 1, 1, 0],   # the pad (NLL 9) is never selected
                     [1, 1, 1, 0, 0, 0]])
    got = select_neglected(nll, real)
    assert [g.tolist() for g in got] == [[1, 3, 4], []]
    assert all(g.dtype == np.int32 for g in got)
    assert select_neglected(nll, real, threshold=0.15)[0].tolist() == [1, 3]


def test_argmax_criterion():
    nll = np.ones((1, 5))
    correct = np.array([[True, False, True, False, False]])
    got = select_neglected(nll, np.array([[1, 1, 1, 1, 0]]), criterion="argmax", argmax_correct=correct)
    assert got[0].tolist() == [1, 3]
    with pytest.raises(ValueError, match="argmax_correct"):
        select_neglected(nll, np.ones((1, 5)), criterion="argmax")
    with pytest.raises(ValueError, match="criterion"):
        select_neglected(nll, np.ones((1, 5)), criterion="entropy")


def test_caps_keep_the_highest_nll_positions():
    nll = np.array([[0.5, 2.0, 0.3, 4.0, 1.0, 2.0, 0.0, 0.0]])
    real = np.array([[1, 1, 1, 1, 1, 1, 1, 0]])  # 7 real tokens, 6 above τ
    assert select_neglected(nll, real, max_per_block=3)[0].tolist() == [1, 3, 5]
    assert select_neglected(nll, real, max_per_block=2)[0].tolist() == [1, 3]  # tie 2.0 at 1 and 5: earlier wins
    assert select_neglected(nll, real, max_ratio=0.3)[0].tolist() == [1, 3]  # floor(0.3 · 7) = 2
    assert select_neglected(nll, real, max_per_block=3, max_ratio=0.15)[0].tolist() == [3]  # the smaller cap
    assert select_neglected(nll, real, max_per_block=10)[0].tolist() == [0, 1, 2, 3, 4, 5]


def test_specials_and_padding_are_never_selected_and_the_cap_is_filled_with_real_tokens():
    vocab = SyntheticVocab(50)  # ids 0-4 special: [PAD] [CLS] [SEP] [UNK] [MASK]
    tokens = np.array([[vocab.cls_id, 20, 21, vocab.unk_id, 22, vocab.sep_id, vocab.pad_id, vocab.pad_id]])
    nll = np.array([[9.0, 1.0, 3.0, 8.0, 2.0, 7.0, 9.5, 9.5]])  # the specials have the highest NLL
    allowed = candidates(tokens, vocab.is_special)
    assert allowed[0].tolist() == [False, True, True, False, True, False, False, False]
    assert select_neglected(nll, allowed)[0].tolist() == [1, 2, 4]
    assert select_neglected(nll, allowed, max_per_block=2)[0].tolist() == [2, 4]
    assert select_neglected(nll, allowed, max_ratio=0.34)[0].tolist() == [2]  # floor(0.34 · 3 candidates) = 1
    assert select_neglected(nll, allowed, criterion="argmax", argmax_correct=np.zeros((1, 8), bool))[0].tolist() \
        == [1, 2, 4]


def mined_blocks(num=200, seed=0):
    """block id -> positions, with empty blocks and gaps in the ids."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=num, replace=False)
    return {int(b): np.sort(rng.choice(SEQ, size=rng.integers(0, 6), replace=False)).astype(np.int32) for b in ids}


def write(directory, rank, blocks, flush_every=None):
    writer = ShardWriter(directory, rank, **RULE)
    for i, (b, pos) in enumerate(blocks.items()):
        writer.add(b, pos[::-1], scored_tokens=SEQ)  # any order in, sorted out
        if flush_every and (i + 1) % flush_every == 0:
            writer.flush()
    writer.flush()


def test_round_trip_and_mapping_interface(tmp_path):
    blocks = mined_blocks()
    write(tmp_path / "shards", 0, blocks)
    (path,) = shard_paths(tmp_path / "shards")
    index = NeglectedIndex(path)
    assert len(index) == len(blocks) and sorted(index) == sorted(blocks)
    for b, pos in blocks.items():
        assert b in index and index[b].dtype == np.int32 and index[b].tolist() == pos.tolist()
    missing = next(b for b in range(10_000) if b not in blocks)
    assert missing not in index and index.get(missing) is None
    with pytest.raises(KeyError):
        index[missing]
    stats = index.stats()
    total = sum(len(p) for p in blocks.values())
    assert stats["blocks"] == len(blocks) and stats["positions"] == total
    assert stats["neglected_fraction"] == pytest.approx(total / (SEQ * len(blocks)))
    assert stats["histogram"].tolist() == np.bincount([len(p) for p in blocks.values()]).tolist()
    assert index.rule == dict(RULE, max_per_block=None, max_ratio=None)
    reopened = pickle.loads(pickle.dumps(index))  # DataLoader workers: reopened by path, not copied
    assert reopened.path == index.path and all(reopened[b].tolist() == p.tolist() for b, p in blocks.items())


def test_plugs_into_mlm_dataset_as_mask_override(tmp_path):
    b, positions = 7, np.array([1, 4, 5], dtype=np.int32)
    writer = ShardWriter(tmp_path, 0, **RULE)
    writer.add(b, positions, scored_tokens=SEQ)
    index = NeglectedIndex(writer.flush())
    dataset = mock_mlm_dataset(100, SEQ, SyntheticVocab(200), seed=3, mask_override=index)
    assert np.flatnonzero(dataset.sample_for_block(b)["loss_mask"]).tolist() == positions.tolist()


def test_merge_is_independent_of_the_sharding(tmp_path):
    blocks = mined_blocks(num=500)
    items = list(blocks.items())
    write(tmp_path / "dp1", 0, blocks)
    for rank in range(2):  # DP=2: rank r mined every other block, flushing parts along the way
        write(tmp_path / "dp2", rank, dict(items[rank::2]), flush_every=60)
    one, two = shard_paths(tmp_path / "dp1"), shard_paths(tmp_path / "dp2")
    assert len(two) > 2
    merge(one, tmp_path / "a.nidx")
    merge(two, tmp_path / "b.nidx")
    merge(two[::-1], tmp_path / "c.nidx")
    ref = (tmp_path / "a.nidx").read_bytes()
    assert ref == (tmp_path / "b.nidx").read_bytes() == (tmp_path / "c.nidx").read_bytes() == one[0].read_bytes()
    assert {b: p.tolist() for b, p in NeglectedIndex(tmp_path / "b.nidx").items()} == \
        {b: p.tolist() for b, p in blocks.items()}


def test_write_index_cleans_and_checks_positions(tmp_path):
    index = NeglectedIndex(write_index(tmp_path / "i.nidx", {5: [3, 1, 3], 2: []}, 2 * SEQ, **RULE))
    assert list(index) == [2, 5] and index[5].tolist() == [1, 3] and index[2].tolist() == []
    with pytest.raises(ValueError, match="block 9"):
        write_index(tmp_path / "j.nidx", {9: [SEQ]}, SEQ, **RULE)
    assert not list(tmp_path.glob("j.nidx*"))


def test_writer_continues_part_numbers(tmp_path):
    write(tmp_path, 3, mined_blocks(num=10, seed=1))
    write(tmp_path, 3, mined_blocks(num=10, seed=2))
    assert [p.name for p in shard_paths(tmp_path)] == ["rank-00003-part-00000.nidx", "rank-00003-part-00001.nidx"]


def test_merge_rejects_overlapping_or_incompatible_shards(tmp_path):
    blocks = mined_blocks(num=20)
    write(tmp_path / "x", 0, blocks)
    write(tmp_path / "x", 1, dict(list(blocks.items())[:1]))
    with pytest.raises(VegaInputError, match="also appears in"):
        merge(shard_paths(tmp_path / "x"), tmp_path / "out.nidx")
    other = ShardWriter(tmp_path / "y", 0, seq_length=SEQ, criterion="argmax")
    other.add(123_456, [1], scored_tokens=SEQ)
    with pytest.raises(VegaInputError, match="criterion"):
        merge([shard_paths(tmp_path / "x")[0], other.flush()], tmp_path / "out.nidx")
    with pytest.raises(VegaInputError, match="no shard files"):
        merge([], tmp_path / "out.nidx")
    assert not (tmp_path / "out.nidx").exists() and not list(tmp_path.glob("out.nidx.tmp*"))


def corruptions(good: bytes):
    flipped = bytearray(good)
    flipped[-3] ^= 0x40  # inside the positions: only the checksum notices
    header_end = good.index(b"}") + 1
    return {
        "truncated": good[:-4],
        "bad magic": b"X" + good[1:],
        "garbled header": good[:20] + b"#" + good[21:],
        "flipped byte": bytes(flipped),
        "not an index": b"hello\n",
        "empty": b"",
        "other version": good[:16] + good[16:header_end].replace(b'"version": 1', b'"version": 9') + good[header_end:],
    }


def test_bad_files_give_one_line_input_errors(tmp_path):
    write(tmp_path, 0, mined_blocks(num=50))
    good = shard_paths(tmp_path)[0].read_bytes()
    for name, data in corruptions(good).items():
        path = tmp_path / f"{name.replace(' ', '_')}.nidx"
        path.write_bytes(data)
        with pytest.raises(VegaInputError) as err:
            NeglectedIndex(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(VegaInputError, match="no such file"):
        NeglectedIndex(tmp_path / "missing.nidx")
    with pytest.raises(VegaInputError):
        NeglectedIndex(tmp_path)  # a directory
