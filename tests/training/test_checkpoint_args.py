"""The model a checkpoint holds is the model every command loading it builds (no model flags needed; explicit ones
must agree, dropouts may differ), and a tokenizer sizes the vocabulary of a new run.

One pretraining launch (tiny preset, a 4000-piece tokenizer, no --vocab-size, --load = --save as a requeued job's
first launch) makes the checkpoint that every other test loads."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_vega.errors import VegaInputError
from tests.conftest import REPO
from tests.data.conftest import embedded_jsonl, write_corpus  # noqa: F401 (fixture)

DATA = ["--seq-length", "32", "--split", "90,10,0"]


def launch(script: str, *flags) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, script, *[str(f) for f in flags]], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pretrained(embedded_jsonl, tmp_path_factory):  # noqa: F811 (fixture)
    """(checkpoint dir, data prefix, tokenizer path) after 2 steps of the tiny preset with a 4000-piece tokenizer."""
    from megatron_vega.data.spm_training import train_tokenizer
    from megatron_vega.data.tokenizer import VegaTokenizer
    root = tmp_path_factory.mktemp("checkpoint_args")
    spm = train_tokenizer([str(embedded_jsonl)], str(root / "spm4000"), 4000, character_coverage=1.0,
                          input_sentence_size=20000).model_path
    tokenizer = VegaTokenizer(spm)
    texts = [json.loads(line)["text"] for line in embedded_jsonl.read_text().splitlines()[:40]]
    data = write_corpus(root / "docs", [tokenizer.encode(t)[:120] for t in texts], vocab_size=4000)
    ckpt = root / "ckpt"
    out = launch("pretrain_vega.py", "--model-preset", "tiny", "--tokenizer-model", spm, "--data-path", data, *DATA,
                 "--micro-batch-size", 2, "--train-iters", 2, "--lr-warmup-iters", 1, "--log-interval", 1,
                 "--eval-interval", 100, "--save-interval", 1, "--save", ckpt, "--load", ckpt)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return ckpt, data, spm


def run_config_of(*flags):
    from megatron_vega.training.arguments import build_parser, run_config
    return run_config(build_parser("test").parse_args([str(f) for f in flags]))


def test_the_tiny_preset_trains_with_a_4000_piece_tokenizer_without_vocab_size(pretrained):
    from megatron_vega.training.checkpointing import read_extra
    ckpt, _, spm = pretrained
    model = read_extra(str(ckpt))["config"]["model"]
    assert model["vocab_size"] == 4000 and model["num_layers"] == 2 and model["hidden_size"] == 64
    # An explicit --vocab-size still decides, and one smaller than the tokenizer stays an error.
    assert run_config_of("--model-preset", "tiny", "--tokenizer-model", spm, "--vocab-size", 4096,
                         "--mock-data").model.vocab_size == 4096
    with pytest.raises(VegaInputError, match="--vocab-size: 1000 is smaller than the 4000 ids"):
        run_config_of("--model-preset", "tiny", "--tokenizer-model", spm, "--vocab-size", 1000, "--mock-data")


def test_a_dry_run_before_the_first_launch_says_which_model_it_counts(capsys, tmp_path):
    run = run_config_of("--model-preset", "tiny", "--tokenizer-model", tmp_path / "later.model", "--mock-data",
                        "--load", tmp_path / "later", "--dry-run")
    out = capsys.readouterr().out
    assert run.model.vocab_size == 1000 and "later.model does not exist yet" in out and "no checkpoint yet" in out


def test_flags_left_out_come_from_the_checkpoint_and_explicit_ones_must_agree(pretrained, tmp_path):
    ckpt, _, spm = pretrained
    run = run_config_of("--load", ckpt, "--mock-data")
    assert (run.model.num_layers, run.model.hidden_size, run.model.vocab_size) == (2, 64, 4000)
    # Agreeing flags, a preset whose vocabulary a tokenizer replaces, and run settings (dropouts) are accepted.
    run = run_config_of("--load", ckpt, "--model-preset", "tiny", "--tokenizer-model", spm, "--hidden-size", 64,
                        "--hidden-dropout", 0.0, "--attention-dropout", 0.05, "--mock-data")
    assert (run.model.hidden_size, run.model.hidden_dropout, run.model.attention_dropout) == (64, 0.0, 0.05)
    with pytest.raises(VegaInputError, match=r"--num-attention-heads: 8 contradicts the checkpoint .* 4\)"):
        run_config_of("--load", ckpt, "--num-attention-heads", 8, "--mock-data")
    with pytest.raises(VegaInputError, match="--model-preset: tiny has vocab_size 1000 but the checkpoint .* 4000"):
        run_config_of("--load", ckpt, "--model-preset", "tiny", "--mock-data")  # no tokenizer: the preset's vocab
    with pytest.raises(VegaInputError, match="--tokenizer-model: .* has 4000 ids but the checkpoint .* of 1000"):
        small = _checkpoint_with(ckpt, tmp_path / "small", vocab_size=1000)
        run_config_of("--load", small, "--tokenizer-model", spm, "--mock-data")


def _checkpoint_with(ckpt: Path, copy: Path, **model) -> Path:
    """A copy of ``ckpt`` whose saved model config says ``model`` (the tensors stay as they are)."""
    shutil.copytree(ckpt, copy)
    common = next(copy.glob("iter_0000002/common.pt"))
    state = torch.load(common, weights_only=False)
    state["extra"]["config"]["model"].update(model)
    torch.save(state, common)
    return copy


def test_stage1_needs_no_model_flags_and_refuses_contradicting_ones(pretrained, tmp_path):
    ckpt, data, spm = pretrained
    common = ["--load", ckpt, "--data-path", data, "--tokenizer-model", spm, *DATA]
    mined = launch("tools/self_questioning.py", *common, "--output", tmp_path / "mined.nidx", "--threshold", 0.1)
    assert mined.returncode == 0, mined.stdout[-2000:] + mined.stderr[-3000:]
    assert (tmp_path / "mined.nidx").exists() and "stage 1:" in mined.stdout
    wrong = launch("tools/self_questioning.py", *common, "--hidden-size", 128, "--output", tmp_path / "x.nidx")
    assert_one_line_error(wrong, "--hidden-size", "128", "hidden_size 64", str(ckpt))
    assert not (tmp_path / "x.nidx").exists()


def test_pretraining_resumes_without_model_flags_and_refuses_another_preset(pretrained, tmp_path):
    ckpt, data, spm = pretrained
    # The job was preempted after its first save: only iteration 1 is published.
    resumed = tmp_path / "resumed"
    shutil.copytree(ckpt, resumed)
    shutil.rmtree(resumed / "iter_0000002")
    (resumed / "latest_checkpointed_iteration.txt").write_text("1\n")
    common = ["--tokenizer-model", spm, "--data-path", data, *DATA, "--micro-batch-size", 2, "--train-iters", 2,
              "--lr-warmup-iters", 1, "--log-interval", 1, "--eval-interval", 100, "--save-interval", 1,
              "--load", resumed, "--save", resumed]
    wrong = launch("pretrain_vega.py", "--model-preset", "base", *common)
    assert_one_line_error(wrong, "--model-preset", "base", "num_layers 12", "has 2")
    out = launch("pretrain_vega.py", *common, "--hidden-dropout", 0.0)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert f"loaded {resumed} at iteration 1" in out.stdout and "iteration      2/2" in out.stdout
    from megatron_vega.training.checkpointing import read_extra
    model = read_extra(str(resumed))["config"]["model"]
    assert (model["vocab_size"], model["num_layers"], model["hidden_dropout"]) == (4000, 2, 0.0)


def test_finetuning_refuses_a_preset_with_load(pretrained):
    ckpt, _, spm = pretrained
    out = launch("finetune_superglue.py", "--task", "CB", "--load", ckpt, "--model-preset", "base",
                 "--tokenizer-model", spm, "--epochs", 0)
    assert_one_line_error(out, "--model-preset")


def test_a_model_that_does_not_match_the_checkpoint_is_one_line_not_a_traceback(pretrained, single_process):
    from megatron_vega.config import ParallelConfig, model_preset
    from megatron_vega.model.build import build_model, transformer_config
    from megatron_vega.training import checkpointing
    ckpt, _, _ = pretrained
    for cfg, problem in ((model_preset("tiny", vocab_size=4000, hidden_size=32, num_attention_heads=2),
                          r"word_embeddings.weight has shape \(4000, 64\) in the checkpoint but \(4000, 32\)"),
                         (model_preset("tiny", vocab_size=4000, num_layers=3), "holds no tensor")):
        chunks = build_model(cfg, transformer_config(cfg, ParallelConfig()))
        with pytest.raises(VegaInputError, match=problem):
            checkpointing.load(str(ckpt), chunks, None, None, with_optimizer=False, with_rng=False)
