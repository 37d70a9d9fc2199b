"""PDR and multi-task under parallelism, in one 2-process launch: PDR (alone and with SiFT) gives the same loss
and gathered gradients at TP=2 as at TP=1 (dropout off, fixed seed), so the noise agrees across TP ranks; and a
multi-task run at DP=2 gives both ranks the same task at every step, never mixing tasks inside a global batch."""
import pytest
import torch

from tests.distributed import spawn
from tests.finetune.helpers import loss_and_grads


def _loss_and_grads(tp: int, spm_path: str, data_file: str, sift: bool):
    from megatron_vega.finetune.config import PdrConfig, SiftConfig

    # Confident posteriors (a fresh head's are near-uniform) and a large noise, so that the PDR term is far from
    # zero (and a noise differing across TP ranks would show).
    return loss_and_grads(tp, spm_path, "CB", data_file, SiftConfig(sift=sift),
                          PdrConfig(pdr=True, pdr_divergence="js", pdr_noise=0.5), head_scale=100.0)


def _multitask_steps_at_dp2(spm_path: str, superglue: str):
    """A few multi-task steps at DP=2 recording, per step, the task id and each micro-batch's samples."""
    import torch.distributed as dist

    from megatron_vega import runtime
    from megatron_vega.config import ParallelConfig, model_preset
    from megatron_vega.data.tokenizer import VegaTokenizer
    from megatron_vega.finetune.config import OptimConfig, PdrConfig, SiftConfig
    from megatron_vega.finetune.features import TextEncoder, make_samples
    from megatron_vega.finetune.multitask import build_multitask_model
    from megatron_vega.finetune.multitask_run import MultitaskFinetuner
    from megatron_vega.model.build import transformer_config
    from megatron_vega.superglue.formats import build_instances
    from megatron_vega.superglue.readers import read_examples

    runtime.init_model_parallel(1, 1, seed=7)
    tokenizer = VegaTokenizer(spm_path)
    cfg = model_preset("tiny", vocab_size=tokenizer.vocab_size)
    tasks = ["CB", "COPA", "RTE"]
    model = build_multitask_model(tasks, cfg, transformer_config(cfg, ParallelConfig()), 0.1, seed=7)
    optim = OptimConfig(micro_batch_size=2, global_batch_size=8, epochs=1, log_interval=1000, seed=3)
    records = []

    class Recording(MultitaskFinetuner):
        def _step(self, optimizer, scheduler, micro_batches, extra=None):
            records.append((int(extra["task_id"]), [[s.sequences for s in m] for m in micro_batches]))
            return super()._step(optimizer, scheduler, micro_batches, extra)

    tuner = Recording(model, optim, SiftConfig(), tokenizer.pad_id, pdr=PdrConfig(pdr=True))
    encoder = TextEncoder(tokenizer, 48)
    samples = [make_samples(t, encoder, build_instances(t, read_examples(t, f"{superglue}/{t}/train.jsonl")[:n]),
                            training=True) for t, n in zip(tasks, (16, 8, 24))]
    tuner.train_tasks(samples, lambda: (0.0, {}), tasks, 1.0)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, records)
    return everyone, [{s.sequences for s in task_samples} for task_samples in samples]


def _checks(rank, world, spm_path, superglue):
    for sift in (False, True):
        tp2 = _loss_and_grads(2, spm_path, f"{superglue}/CB/val.jsonl", sift)
        tp1 = _loss_and_grads(1, spm_path, f"{superglue}/CB/val.jsonl", sift)  # DP=2: both ranks, same batch
        assert tp2[1][2] > 1e-3  # the PDR term is really there
        assert tp2[0] == pytest.approx(tp1[0], rel=1e-5, abs=1e-5)
        assert tp2[1] == pytest.approx(tp1[1], rel=1e-5, abs=1e-5)
        for name, grad in tp1[2].items():
            torch.testing.assert_close(tp2[2][name], grad, rtol=1e-5, atol=1e-5, msg=name)

    everyone, by_task = _multitask_steps_at_dp2(spm_path, superglue)
    tasks_per_rank = [[task for task, _ in records] for records in everyone]
    assert tasks_per_rank[0] == tasks_per_rank[1]  # the same task on both DP ranks at every step
    assert sorted(tasks_per_rank[0]) == [0, 0, 1, 2, 2, 2]  # T=1: 16/8, 8/8, 24/8 batches
    for step in zip(*everyone):  # the global batch of a step: both ranks' micro-batches
        task = step[0][0]
        sequences = [seq for _, micro in step for m in micro for seq in m]
        assert len(sequences) == 8 and all(seq in by_task[task] for seq in sequences)


@pytest.mark.slow
def test_pdr_tp2_equals_tp1_and_multitask_tasks_agree_across_dp(shared_data):
    spawn(_checks, 2, str(shared_data / "corpus" / "botchan_sp1k.model"), str(shared_data / "superglue" / "full"))
