"""Issue 20, check 3, through pretrain_vega.py --objective glm: TP=2 with sequence parallelism trains as TP=1
(dropout off, 1e-5 relative), and TP=1's checkpoint, resumed by a fresh PP=2 launch, goes on exactly as the
uninterrupted TP=1 run."""
import pytest
from torch.distributed.checkpoint import FileSystemReader

from megatron_vega.errors import VegaInputError
from megatron_vega.objectives.glm import GLMSettings, check_settings
from tests.launch import launch, launch_ok, one_line_error, training_log

SCRIPT = "pretrain_vega.py"
FLAGS = ("--objective", "glm", "--model-preset", "tiny", "--mock-data", "--seq-length", 64, "--micro-batch-size", 2,
         "--global-batch-size", 4, "--log-interval", 1, "--lr", 1e-3, "--hidden-dropout", 0, "--attention-dropout", 0,
         "--glm-sentence-prob", 0.2, "--glm-token-prob", 0.6, "--train-iters", 6)
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
def test_glm_tp2_equals_tp1_and_resumes_exactly_at_pp2(tmp_path):
    tp1 = launch_ok(SCRIPT, *FLAGS, "--save-interval", 3, "--save", tmp_path / "tp1")
    tp1_log = training_log(tp1.stdout)
    assert sorted(tp1_log) == list(range(1, 7))
    assert tp1_log[6]["loss"] < tp1_log[1]["loss"]  # Part-B loss goes down
    stored = FileSystemReader(str(tmp_path / "tp1" / "iter_0000003")).read_metadata().state_dict_metadata
    assert "block_position_embeddings.weight" in stored

    tp2 = training_log(launch_ok(SCRIPT, *FLAGS, "--tensor-model-parallel-size", 2, "--sequence-parallel",
                                 nproc=2).stdout)
    pp2 = launch_ok(SCRIPT, *FLAGS, "--pipeline-model-parallel-size", 2, "--load", tmp_path / "tp1",
                    "--ckpt-step", 3, nproc=2)
    assert "at iteration 3" in pp2.stdout
    pp2_log = training_log(pp2.stdout)
    assert sorted(pp2_log) == [4, 5, 6]
    for step in range(1, 7):
        assert tp2[step]["loss"] == pytest.approx(tp1_log[step]["loss"], rel=RTOL), step
        assert tp2[step]["grad_norm"] == pytest.approx(tp1_log[step]["grad_norm"], rel=1e-3), step
    for step in (4, 5, 6):
        assert pp2_log[step]["loss"] == pytest.approx(tp1_log[step]["loss"], rel=RTOL), step
