"""End-to-end fine-tuning of the random-init tiny model on real SuperGLUE subsets: each run ends with a dev score
and a leaderboard file, and scoring that file (written for the dev records) reproduces the run's dev score."""
import pytest
import torch

from megatron_vega.finetune.run import finetune
from megatron_vega.superglue.readers import read_examples
from megatron_vega.superglue.scoring import evaluate
from megatron_vega.superglue.submission import read_predictions
from tests.finetune.conftest import tiny_run

METRICS = {"CB": {"f1", "accuracy"}, "MultiRC": {"f1a", "em"}, "ReCoRD": {"f1", "em"}}
# Records used (MultiRC / ReCoRD records are passages: FewGLUE's have one question each, full val ~20 answers).
LIMITS = {"MultiRC": (4, 1), "ReCoRD": (4, 4)}


def _files(superglue, task):
    """Data flags, and the dev file (also passed as the test file, so the predictions can be scored)."""
    if task in ("MultiRC", "ReCoRD"):
        dev = superglue / ("dev32/ReCoRD/dev32.jsonl" if task == "ReCoRD" else "full/MultiRC/val.jsonl")
        return {"train_file": str(superglue / "fewglue" / task / "train.jsonl"), "dev_file": str(dev),
                "test_file": str(dev)}, dev
    dev = superglue / "full" / task / "val.jsonl"
    return {"data_dir": str(superglue / "full"), "test_file": str(dev)}, dev


@pytest.mark.slow
@pytest.mark.parametrize("sift", [False, True], ids=["plain", "sift"])
@pytest.mark.parametrize("task", ["CB", "COPA", "MultiRC", "ReCoRD", "WiC", "WSC"])
def test_dev_score_and_predictions_file(world_of_one, superglue, spm_path, tmp_path, task, sift):
    files, dev = _files(superglue, task)
    n_train, n_eval = LIMITS.get(task, (16, 8))
    optim = {"seq_length": 128 if task == "ReCoRD" else 64}  # ReCoRD: room for the query and a passage window
    summary = finetune(tiny_run(task, spm_path, sift, max_train_examples=n_train, max_eval_examples=n_eval,
                                predict=str(tmp_path), optim=optim, **files))
    assert set(summary["dev"]) == METRICS.get(task, {"accuracy"})
    predictions = read_predictions(task, tmp_path / f"{task}.jsonl")
    assert evaluate(task, read_examples(task, dev)[:n_eval], predictions) == summary["dev"]


@pytest.mark.slow
def test_transductive_round_pseudo_labels_the_test_split(world_of_one, superglue, spm_path, tmp_path):
    run = tiny_run("COPA", spm_path, rounds=1, data_dir=str(superglue / "full"), max_train_examples=16,
                   max_eval_examples=8, predict=str(tmp_path), optim={"seq_length": 64})
    run.transductive.transductive_min_flip_rate = 0.0
    summary = finetune(run)
    first, second = summary["rounds"]
    assert second["pseudo_labelled"] == 2 * 8  # every option of the 8 test questions (threshold 0)
    assert 0.0 <= second["flip_rate"] <= 1.0 and set(second["dev"]) == {"accuracy"}
    assert summary["dev"] == max(first["dev"], second["dev"], key=lambda m: m["accuracy"])
    test = read_examples("COPA", superglue / "full" / "COPA" / "test.jsonl")[:8]
    assert set(read_predictions("COPA", tmp_path / "COPA.jsonl")) == {ex.idx for ex in test}


@pytest.mark.slow
def test_rte_model_predicts_ax_and_reloads_from_its_checkpoint(world_of_one, superglue, spm_path, tmp_path):
    full = str(superglue / "full")
    optim = {"epochs": 1, "seq_length": 64}
    trained = finetune(tiny_run("RTE", spm_path, data_dir=full, max_train_examples=16, max_eval_examples=8,
                                predict=str(tmp_path / "a"), save=str(tmp_path / "ckpt"), optim=optim))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["AX-b.jsonl", "AX-g.jsonl", "RTE.jsonl"]
    run = tiny_run("RTE", None, data_dir=full, max_eval_examples=8, load=str(tmp_path / "ckpt"),
                   predict=str(tmp_path / "b"), optim={**optim, "epochs": 0})
    run.model_preset = None  # model, tokenizer and head all come from the checkpoint
    reloaded = finetune(run)
    assert reloaded["dev"] == trained["dev"]
    for name in ("RTE.jsonl", "AX-b.jsonl", "AX-g.jsonl"):
        assert (tmp_path / "b" / name).read_text() == (tmp_path / "a" / name).read_text()


@pytest.mark.slow
def test_encoder_loads_from_a_pretraining_checkpoint(world_of_one, superglue, spm_path, tmp_path):
    from dataclasses import replace

    from megatron_vega.config import model_preset
    from megatron_vega.data.mlm_dataset import build_mlm_datasets
    from megatron_vega.data.tokenizer import vocabulary
    from megatron_vega.finetune.run import Run
    from megatron_vega.model.weights import gather_full_state_dict
    from megatron_vega.objectives.pretrain import build_trainer
    from tests.training.helpers import tiny_run as pretraining_run

    pretraining = replace(pretraining_run(iters=3, save=str(tmp_path / "pt")),
                          model=model_preset("tiny", vocab_size=1002))  # botchan's 1000 pieces + [MASK], [PAD]
    trainer = build_trainer(pretraining)
    trainer.train(build_mlm_datasets(pretraining.data, vocabulary(pretraining), pretraining.train.seed)[0])
    pretrained = gather_full_state_dict(trainer.chunks)
    run = tiny_run("CB", spm_path, data_dir=str(superglue / "full"), max_eval_examples=4, load=str(tmp_path / "pt"),
                   optim={"epochs": 0, "seq_length": 64})
    run.model_preset = None
    encoder = gather_full_state_dict([Run(run).model.encoder])
    assert set(pretrained) - set(encoder) == {k for k in pretrained if k.startswith("lm_head.")}
    for name, tensor in encoder.items():
        assert torch.equal(tensor, pretrained[name]), name
