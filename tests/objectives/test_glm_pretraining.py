"""Issue 20, check 3, through pretrain_vega.py --objective glm, one set of launches (8 steps, dropout off, 1e-5
relative): TP=2 with sequence parallelism, and PP=2 x DP=2 with ZeRO-1 (--use-distributed-optimizer), both from
scratch, train as TP=1; the PP=2 x DP=2 checkpoint of step 4, resumed by a fresh TP=1 process (resharded, the
ZeRO-1 optimizer state too), goes on exactly as the uninterrupted TP=1 run. TP=1's checkpoint exports to
Hugging Face (DebertaV2ForMaskedLM, no missing or unexpected keys, MLM logits on Part-A-only inputs within 1e-4;
the special tokens in the tokenizer, the position-2 table beside). In bf16, GLM pretraining stays within 1e-3 of
fp32 over 2 steps, and that checkpoint fine-tunes CB as a cloze task with P-tuning's prompt encoder (real data, one
short epoch, finite losses, a dev score)."""
import json
import re

import pytest
from torch.distributed.checkpoint import FileSystemReader

from megatron_vega.errors import VegaInputError
from megatron_vega.objectives.glm import GLMSettings, check_settings
from tests.launch import launch, launch_ok, one_line_error, training_log

SCRIPT = "pretrain_vega.py"
FLAGS = ("--objective", "glm", "--model-preset", "tiny", "--mock-data", "--seq-length", 64, "--micro-batch-size", 2,
         "--global-batch-size", 4, "--log-interval", 1, "--lr", 1e-3, "--hidden-dropout", 0, "--attention-dropout", 0,
         "--glm-sentence-prob", 0.2, "--glm-token-prob", 0.6, "--train-iters", 8,
         "--vocab-size", 1006)  # the 1k corpus tokenizer's ids + 4: its HF export names the specials
RTOL = 1e-5


def test_bad_settings_refused_in_one_line():
    with pytest.raises(VegaInputError, match="--glm-sentence-prob"):
        check_settings(GLMSettings(glm_token_prob=0.7, glm_sentence_prob=0.5))
    with pytest.raises(VegaInputError, match="--glm-text-share"):
        check_settings(GLMSettings(glm_text_share=1.0))


def test_glm_flags_in_help_and_a_vocabulary_without_room_refused(shared_data):
    shown = launch_ok(SCRIPT, "--help").stdout
    assert "--glm-mask-ratio" in shown and "--glm-block-positions" in shown
    # a tokenizer filling the whole vocabulary leaves no ids for [sop] [eop] [sMASK] [gMASK]
    no_room = launch(SCRIPT, "--objective", "glm", "--model-preset", "tiny", "--mock-data", "--tokenizer-model",
                     shared_data / "corpus" / "botchan_sp1k.model")
    assert "give --vocab-size 1006" in one_line_error(no_room, "--vocab-size")


@pytest.mark.slow
def test_glm_tp2_pp2_dp2_zero1_equal_tp1_resume_exactly_and_export(tmp_path, shared_data):
    tp1 = launch_ok(SCRIPT, *FLAGS, "--save-interval", 4, "--save", tmp_path / "tp1")
    tp1_log = training_log(tp1.stdout)
    assert sorted(tp1_log) == list(range(1, 9))
    assert tp1_log[8]["loss"] < tp1_log[1]["loss"]  # Part-B loss goes down
    stored = FileSystemReader(str(tmp_path / "tp1" / "iter_0000004")).read_metadata().state_dict_metadata
    assert "block_position_embeddings.weight" in stored

    tp2 = training_log(launch_ok(SCRIPT, *FLAGS, "--tensor-model-parallel-size", 2, "--sequence-parallel",
                                 nproc=2).stdout)
    pp2_dp2 = launch_ok(SCRIPT, *FLAGS, "--pipeline-model-parallel-size", 2, "--use-distributed-optimizer",
                        "--save-interval", 4, "--save", tmp_path / "pp2dp2", nproc=4)
    pp2_dp2_log = training_log(pp2_dp2.stdout)
    resumed = launch_ok(SCRIPT, *FLAGS, "--use-distributed-optimizer", "--load", tmp_path / "pp2dp2", "--ckpt-step", 4)
    assert "at iteration 4" in resumed.stdout
    resumed_log = training_log(resumed.stdout)
    assert sorted(resumed_log) == [5, 6, 7, 8]
    for name, log, steps in (("tp2+sp", tp2, range(1, 9)), ("pp2 x dp2 zero-1", pp2_dp2_log, range(1, 9)),
                             ("resumed", resumed_log, range(5, 9))):
        for step in steps:
            assert log[step]["loss"] == pytest.approx(tp1_log[step]["loss"], rel=RTOL), (name, step)
            assert log[step]["grad_norm"] == pytest.approx(tp1_log[step]["grad_norm"], rel=1e-3), (name, step)

    exported = launch_ok("tools/convert_checkpoint.py", "to-hf", "--load", tmp_path / "tp1", "--out",
                         tmp_path / "hf", "--tokenizer-model",
                         shared_data / "corpus" / "botchan_sp1k.model", "--verify")
    assert "block_positions.safetensors" in exported.stdout
    difference = float(re.search(r"largest \|MLM logit difference\| vs transformers = (\S+)", exported.stdout)[1])
    assert difference < 1e-4
    from safetensors.torch import load_file
    from transformers import DebertaV2ForMaskedLM, DebertaV2Tokenizer
    _, info = DebertaV2ForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokenizer = DebertaV2Tokenizer.from_pretrained(tmp_path / "hf")
    specials = json.loads((tmp_path / "hf" / "config.json").read_text())["glm_special_tokens"]
    assert specials == {"[sop]": 1002, "[eop]": 1003, "[sMASK]": 1004, "[gMASK]": 1005}
    assert tokenizer.convert_tokens_to_ids(list(specials)) == list(specials.values())
    assert load_file(tmp_path / "hf" / "block_positions.safetensors")["block_position_embeddings.weight"].shape[0] > 64

    bf16 = training_log(launch_ok(SCRIPT, *FLAGS, "--train-iters", 2, "--lr-decay-iters", 8, "--bf16").stdout)
    for step in (1, 2):
        assert bf16[step]["loss"] == pytest.approx(tp1_log[step]["loss"], rel=1e-3), step

    cloze = launch_ok("finetune_superglue.py", "--task", "CB", "--format", "cloze", "--bf16", "--prompt-encoder",
                      "lstm", "--data-dir", shared_data / "superglue" / "full", "--load", tmp_path / "tp1",
                      "--tokenizer-model", shared_data / "corpus" / "botchan_sp1k.model", "--seq-length", 64,
                      "--micro-batch-size", 4, "--global-batch-size", 4, "--epochs", 1, "--max-train-examples", 8,
                      "--max-eval-examples", 8, "--log-interval", 1)
    losses = [float(x) for x in re.findall(r"\| loss (\S+) \|", cloze.stdout)]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses), cloze.stdout
    assert 0 <= json.loads(cloze.stdout.strip().splitlines()[-1])["dev"]["accuracy"] <= 1
