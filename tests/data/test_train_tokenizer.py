import json

import pytest

from megatron_vega.data.tokenizer import VegaTokenizer
from tests.data.conftest import assert_one_line_error, run_tool

TEXT = "\n".join(f"Line {i} tells how the quick brown fox number {i % 7} jumps over the lazy dog." for i in range(400))


def train(tmp_path, *inputs, prefix="out/tok", vocab=60, extra=()):
    (tmp_path / "out").mkdir(exist_ok=True)
    return run_tool("train_tokenizer.py", "--input", *inputs, "--vocab-size", vocab,
                    "--model-prefix", tmp_path / prefix, *extra)


def test_same_seed_same_bytes_wherever_written(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT, encoding="utf-8")
    flags = ("--input-sentence-size", "200", "--seed", "7")
    for prefix in ("out/a", "out/b"):
        result = train(tmp_path, text, prefix=prefix, extra=flags)
        assert result.returncode == 0, result.stderr
    for ext in (".model", ".vocab"):
        assert (tmp_path / f"out/a{ext}").read_bytes() == (tmp_path / f"out/b{ext}").read_bytes()
    tok = VegaTokenizer(tmp_path / "out/a.model")
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.unk_id, tok.mask_id, tok.vocab_size) == (0, 1, 2, 3, 4, 60)


def test_jsonl_input(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": line, "id": i}) + "\n" for i, line in enumerate(TEXT.splitlines())))
    result = train(tmp_path, jsonl)
    assert result.returncode == 0, result.stderr
    tokenizer = VegaTokenizer(tmp_path / "out/tok.model")
    assert tokenizer.decode(tokenizer.encode("the lazy dog")) == "the lazy dog"


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "latin1", "bad_json", "vocab_too_large"])
def test_bad_input_one_line_error_and_no_output(tmp_path, case):
    good = tmp_path / "good.txt"
    good.write_text(TEXT, encoding="utf-8")
    bad = tmp_path / ("bad.jsonl" if case == "bad_json" else "bad.txt")
    content = {"empty": b"", "blank": b"\n  \n\n", "latin1": "caf\u00e9 au lait\n".encode("latin-1"),
               "bad_json": b'{"text": "ok"}\n{"text": \n'}.get(case)
    if content is not None:
        bad.write_bytes(content)
    if case == "vocab_too_large":
        result, where = train(tmp_path, good, vocab=5000), "--vocab-size"
    else:
        result, where = train(tmp_path, good, bad), str(bad)
    assert_one_line_error(result, where)
    assert list((tmp_path / "out").iterdir()) == []
