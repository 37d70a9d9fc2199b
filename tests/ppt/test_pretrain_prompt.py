"""tools/pretrain_prompt.py end to end: a TP=2 launch (torchrun) trains the same prompt as TP=1 (in process), step
losses, dev accuracy and the saved tensors; only the prompt changes; the file is taken by fine-tuning's
--init-prompt; an existing file is refused."""
import json
import re

import pytest
import torch

from megatron_vega.errors import VegaInputError
from tests.launch import launch_ok

_STEP = re.compile(r"^iteration (\d+)/\d+: loss (\S+)$", re.MULTILINE)


def _flags(spm_path, text, save):
    return ["--model-preset", "tiny", "--tokenizer-model", spm_path, "--text", text, "--ppt-task", "nsp3",
            "--ppt-label-words", "no", "may", "sure", "--prompt-length", "4", "--seq-length", "64",
            "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "3", "--eval-interval", "3",
            "--log-interval", "1", "--ppt-max-dev-examples", "16", "--lr", "0.05", "--hidden-dropout", "0",
            "--attention-dropout", "0", "--seed", "9", "--save", save]


@pytest.fixture
def small_corpus(shared_data, tmp_path):
    """The first 60 paragraphs of wikitext-2 valid (plain text, a document per paragraph)."""
    paragraphs = (shared_data / "corpus" / "wikitext2.valid.tokens").read_text().split("\n \n")[:60]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(p.strip() for p in paragraphs) + "\n")
    return str(path)


@pytest.mark.slow
def test_tp2_equals_tp1_and_init_prompt_takes_the_file(world_of_one, spm_path, small_corpus, tmp_path):
    from megatron_vega.ppt.config import parse_args as parse
    from megatron_vega.ppt.train import PromptPretrainer
    from megatron_vega.prompt.store import read_prompt_file

    tp2_file, tp1_file = str(tmp_path / "tp2.pt"), str(tmp_path / "tp1.pt")
    out = launch_ok("tools/pretrain_prompt.py", *_flags(spm_path, small_corpus, tp2_file),
                    "--tensor-model-parallel-size", "2", nproc=2).stdout
    tp2_losses = [float(m[2]) for m in _STEP.finditer(out)]
    tp2_summary = json.loads(out.strip().splitlines()[-1])

    trainer = PromptPretrainer(parse(_flags(spm_path, small_corpus, tp1_file)))
    frozen = {k: v.detach().clone() for k, v in trainer.encoder.named_parameters()}
    start = trainer.prompt.encoder.embedding.detach().clone()
    summary = trainer.run()
    assert tp2_losses == pytest.approx(summary["train_losses"], abs=2e-6) and len(tp2_losses) == 3
    assert tp2_summary["dev_best"] == summary["dev_best"] and tp2_summary["dev_initial"] == summary["dev_initial"]
    for name, value in trainer.encoder.named_parameters():  # the backbone is bit-identical
        assert torch.equal(value, frozen[name]), name
    tp1, tp2 = read_prompt_file(tp1_file, trainer.model_cfg), read_prompt_file(tp2_file, trainer.model_cfg)
    assert tp1["task"] == "PPT-nsp3" and tp1["head"] == {} and tp1["structure"]["type"] == "shallow"
    for name, value in tp1["prompt"].items():
        torch.testing.assert_close(tp2["prompt"][name], value, rtol=1e-5, atol=1e-6)
    assert summary["best_iteration"] == 3  # dev loss went down: the saved prompt is the trained one, not the init
    assert not torch.equal(tp1["prompt"]["encoder.embedding"], start.cpu())

    # fine-tuning's vanilla transfer starts a task's prompt from the PPT file
    from megatron_vega.finetune.config import FinetuneRun, OptimConfig, TaskConfig
    from megatron_vega.finetune.prompt_tuning import attach_prompt
    from megatron_vega.finetune.task_model import build_task_model
    from megatron_vega.model.build import transformer_config
    from megatron_vega.prompt.config import PromptConfig
    run = FinetuneRun(task=TaskConfig(task="RTE"), optim=OptimConfig(seed=9), model_preset="tiny",
                      prompt=PromptConfig(prompt_tuning=True, init_prompt=tp1_file))
    model = build_task_model("RTE", trainer.model_cfg, transformer_config(trainer.model_cfg, _tp1()), 0.0, seed=9)
    origin = attach_prompt(run, model, trainer.model_cfg, trainer.tokenizer, torch.float32)
    assert origin["transferred_from"]["task"] == "PPT-nsp3" and model.prompt.length == 4
    torch.testing.assert_close(model.prompt.encoder.embedding.detach().cpu(), tp1["prompt"]["encoder.embedding"])

    with pytest.raises(VegaInputError, match="exists; pass --overwrite"):
        parse(_flags(spm_path, small_corpus, tp1_file))


def _tp1():
    from megatron_vega.config import ParallelConfig
    return ParallelConfig()
