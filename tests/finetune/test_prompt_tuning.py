"""Prompt tuning on the random-init tiny model with real SuperGLUE files: the backbone stays bit-identical, only
the prompt and the head train, a saved prompt predicts exactly as before, transfer and PANDA wire up."""
import numpy as np
import pytest
import torch

from megatron_vega.errors import VegaInputError
from megatron_vega.finetune.run import Run
from megatron_vega.prompt.config import PandaConfig, PromptConfig
from megatron_vega.prompt.store import read_prompt_file
from tests.finetune.conftest import tiny_run

SMALL = {"max_train_examples": 24, "max_eval_examples": 16}


def prompt_run(task, spm_path, superglue, prompt: dict, panda: dict | None = None, epochs=1, **task_cfg):
    run = tiny_run(task, spm_path, data_dir=str(superglue / "full"), **{**SMALL, **task_cfg},
                   optim={"epochs": epochs, "lr": 1e-2, "seq_length": 64})
    run.prompt = PromptConfig(prompt_tuning=True, prompt_length=4, **prompt)
    run.panda = PandaConfig(**(panda or {}))
    run.validate()
    return Run(run)


def dev_logits(r: Run) -> np.ndarray:
    return np.concatenate(r.tuner.predict(r._samples(r.dev)))


@pytest.mark.parametrize("prompt", [{"prompt_type": "deep"},
                                    {"prompt_type": "shallow", "prompt_encoder": "lstm", "prompt_init": "vocab"},
                                    {"prompt_type": "deep", "prompt_encoder": "mlp", "prompt_hidden_size": 16}],
                         ids=["deep", "shallow-lstm-vocab", "deep-mlp"])
def test_backbone_bitwise_unchanged_and_only_prompt_and_head_train(world_of_one, superglue, spm_path, prompt):
    r = prompt_run("WSC", spm_path, superglue, prompt)
    backbone = {n: p.detach().clone() for n, p in r.model.encoder.named_parameters()}
    head = {n: p.detach().clone() for n, p in r.model.head.named_parameters()}
    trainable = {n for n, p in r.model.named_parameters() if p.requires_grad}
    assert trainable == {f"prompt.{n}" for n, _ in r.model.prompt.named_parameters()} | {f"head.{n}" for n in head}
    expected = sum(p.numel() for p in r.model.prompt.parameters()) + sum(p.numel() for p in head.values())
    optimized = sum(p.numel() for group in r.tuner._optimizer_and_schedule(1)[0].param_groups for p in group["params"])
    assert optimized == expected
    r()
    for name, p in r.model.encoder.named_parameters():
        assert torch.equal(p, backbone[name]), name
    assert any(not torch.equal(p, head[n]) for n, p in r.model.head.named_parameters())


def test_saved_prompt_predicts_the_same_and_refuses_overwrite(world_of_one, superglue, spm_path, tmp_path):
    path = str(tmp_path / "cb.pt")
    trained = prompt_run("CB", spm_path, superglue, {"save_prompt": path})
    summary = trained()
    before = dev_logits(trained)
    loaded = prompt_run("CB", spm_path, superglue, {"load_prompt": path}, epochs=0)
    np.testing.assert_array_equal(dev_logits(loaded), before)
    assert loaded()["dev"] == summary["dev"]
    state = read_prompt_file(path, trained.model_cfg, "CB")
    assert state["structure"]["length"] == 4 and state["dev"] == summary["dev"]
    with pytest.raises(VegaInputError, match="exists; pass --overwrite"):
        prompt_run("CB", spm_path, superglue, {"save_prompt": path})
    with pytest.raises(VegaInputError, match="are for CB, not RTE"):
        prompt_run("RTE", spm_path, superglue, {"load_prompt": path}, epochs=0)


def test_transfer_copies_prompt_not_classifier_and_panda_trains_against_it(world_of_one, superglue, spm_path,
                                                                          tmp_path):
    source, teacher = str(tmp_path / "rte.pt"), str(tmp_path / "cb_from_rte.pt")
    prompt_run("RTE", spm_path, superglue, {"save_prompt": source})()
    transfer = prompt_run("CB", spm_path, superglue, {"init_prompt": source, "save_prompt": teacher}, epochs=0)
    rte = torch.load(source, weights_only=True)
    assert torch.equal(transfer.model.prompt.encoder.embedding.float(), rte["prompt"]["encoder.embedding"])
    assert torch.equal(transfer.model.head.pooler.dense.weight.float(), rte["head"]["pooler.dense.weight"])
    assert transfer.model.head.classifier.weight.shape[0] == 3  # CB's 3 classes, freshly initialised
    transfer()
    assert read_prompt_file(teacher, transfer.model_cfg, "CB")["transferred_from"]["task"] == "RTE"

    student = prompt_run("CB", spm_path, superglue, {}, {"panda_teacher": teacher})
    assert student.tuner.panda_lambda == 0.1 and student.tuner.teacher is not None
    teacher_before = {n: p.detach().clone() for n, p in student.tuner.teacher.named_parameters()}
    batch = next(iter([student.tuner._device(__import__("megatron_vega.finetune.features", fromlist=["collate"])
                                            .collate(student._samples(student.dev)[:4], student.tokenizer.pad_id))]))
    loss, parts = student.tuner.loss(batch)
    assert parts[1] > 0 and loss.item() > parts[0].item()  # the KD term is there
    student()
    for name, p in student.tuner.teacher.named_parameters():
        assert torch.equal(p, teacher_before[name]), name
