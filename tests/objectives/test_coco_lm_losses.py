"""COCO-LM's loss terms and replacement sampling against naive, fully materialised references (fp32, 1e-5) with
fixed replacements passed in: generator MLM, copy, corrective LM (values and gradients, the weight detached), SCL,
and the objective's combination of them in its [s, b] / s-major layout; at TP=1 and on vocabulary shards at TP=2.
The Gumbel-max draw is the full-vocabulary one on every TP rank and follows softmax(z)."""
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vega import runtime
from megatron_vega.config import model_preset
from megatron_vega.objectives.coco_lm import CocoLM, CocoLMConfig
from megatron_vega.objectives.coco_lm_losses import (
    copy_loss,
    corrective_lm_loss,
    masked_lm_loss,
    sequence_contrastive_loss,
)
from megatron_vega.objectives.mlm import MaskedLM
from megatron_vega.ops.vocab_parallel_sampling import gumbel_noise, row_keys, vocab_parallel_gumbel_sample
from megatron_vega.training.arguments import RunConfig
from megatron_vega.training.flops import forward_flops_per_token
from tests.distributed import spawn

V, B, S, D = 16, 3, 7, 5  # vocabulary (divisible by the TP size), batch, sequence, SCL size
TOL = dict(atol=1e-5, rtol=1e-5)


def naive_ce(z, y):
    return torch.stack([-torch.log_softmax(z[i].double(), -1)[y[i]] for i in range(len(y))]).float()


def naive_copy(b, replaced, keep):
    terms = [-(torch.log(torch.sigmoid(b[i])) if not replaced[i] else torch.log(1 - torch.sigmoid(b[i])))
             for i in range(len(b)) if keep[i]]
    return torch.stack(terms).mean()


def naive_clm(z, y, b):
    return ((1 - torch.sigmoid(b.detach())) * naive_ce(z, y)).sum() / len(y)


def naive_scl(crop, corrupted, tau):
    views = []
    for u, v in zip(crop, corrupted, strict=True):
        views += [u / u.norm(), v / v.norm()]
    nll = []
    for r, row in enumerate(views):
        others = [c for c in range(len(views)) if c != r]
        sims = torch.stack([row @ views[c] / tau for c in others])
        nll.append(-torch.log_softmax(sims, 0)[others.index(r ^ 1)])
    return torch.stack(nll).mean()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(5, V, (B, S), generator=g)
    padding = torch.ones(B, S, dtype=torch.long)
    padding[1, 5:] = 0
    masked = torch.zeros(B, S, dtype=torch.bool)
    masked[0, [1, 4]] = masked[1, 2] = masked[2, [0, 3, 6]] = True
    corrupted = labels.clone()
    corrupted[0, 1] = (labels[0, 1] + 1) % V  # replaced
    corrupted[2, 3] = (labels[2, 3] + 2) % V  # replaced; the other masked positions drew the original
    positions = torch.nonzero(masked.t().reshape(-1)).squeeze(1)  # s-major, as host_batch computes them
    return dict(labels=labels, padding=padding, masked=masked, corrupted=corrupted, positions=positions,
                clm=torch.randn(len(positions), V, generator=g) * 2, copy=torch.randn(S, B, generator=g) * 2,
                crop=torch.randn(B, D, generator=g), cor=torch.randn(B, D, generator=g))


def shard_of(z):
    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    return z.chunk(tp, dim=-1)[rank].clone()  # a copy: the vocab-parallel CE overwrites its logits


def gathered(t):
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def check_terms():
    x = inputs()
    labels_m = x["labels"].t().reshape(-1)[x["positions"]]
    # generator MLM (and its accuracy): values and gradients
    z = shard_of(x["clm"]).requires_grad_()
    loss, correct = masked_lm_loss(z.clone(), labels_m)
    loss.backward()
    zr = x["clm"].clone().requires_grad_()
    want = naive_ce(zr, labels_m).mean()
    want.backward()
    assert torch.allclose(loss, want, **TOL)
    assert torch.allclose(gathered(z.grad), zr.grad, **TOL)
    assert torch.equal(correct, x["clm"].argmax(-1) == labels_m)
    # copy loss over non-padding tokens, t = 1 where the token is original
    replaced = (x["corrupted"] != x["labels"]).t()
    got = copy_loss(x["copy"], replaced, x["padding"].t())
    want = naive_copy(x["copy"].reshape(-1), replaced.reshape(-1), x["padding"].t().reshape(-1).bool())
    assert torch.allclose(got, want, **TOL)
    # corrective LM: weighted by the detached probability of "replaced"; no gradient into the copy logits
    z = shard_of(x["clm"]).requires_grad_()
    b = x["copy"].reshape(-1)[x["positions"]].clone().requires_grad_()
    loss, _ = corrective_lm_loss(z.clone(), labels_m, b)
    loss.backward()
    zr = x["clm"].clone().requires_grad_()
    want = naive_clm(zr, labels_m, b.detach())
    want.backward()
    assert torch.allclose(loss, want, **TOL)
    assert torch.allclose(gathered(z.grad), zr.grad, **TOL)
    assert b.grad is None or not b.grad.any()
    # SCL, two temperatures
    for tau in (1.0, 0.1):
        got, hits = sequence_contrastive_loss(x["crop"], x["cor"], tau)
        assert torch.allclose(got, naive_scl(x["crop"], x["cor"], tau), **TOL), tau
        assert hits.shape == (2 * B,)


def check_objective_combines_the_terms():
    """CocoLM.main_loss on a toy batch: λ_bin·copy + CLM + λ_scl·SCL, each from the naive references, positions
    read in the batch's own [b, s] order (so a layout mistake in the s-major plumbing fails here)."""
    x = inputs(seed=1)
    objective = CocoLM(RunConfig(model=model_preset("tiny"),
                                 objective=CocoLMConfig(objective="coco-lm", scl=True, scl_temperature=0.5,
                                                        copy_loss_weight=7.0, scl_loss_weight=3.0)))
    batch = {"labels": x["labels"], "padding_mask": x["padding"], "lm_positions": x["positions"]}
    outputs = {"copy_head": x["copy"], "clm_head": shard_of(x["clm"]), "scl_head": x["cor"]}
    total, metrics = objective.main_loss(batch, x["corrupted"], x["crop"], outputs)
    copy_bs, keep, rep, clm_rows, gold = x["copy"].t(), x["padding"].bool(), x["corrupted"] != x["labels"], [], []
    for j in range(S):  # the masked tokens in s-major order, as the head computes them
        for i in range(B):
            if x["masked"][i, j]:
                clm_rows.append((i, j))
                gold.append(x["labels"][i, j])
    b_m = torch.stack([copy_bs[i, j] for i, j in clm_rows])
    want_copy = naive_copy(copy_bs[keep], rep[keep], torch.ones(int(keep.sum()), dtype=torch.bool))
    want_clm = naive_clm(x["clm"], torch.stack(gold), b_m)
    want_scl = naive_scl(x["crop"], x["cor"], 0.5)
    assert torch.allclose(metrics["copy loss"], want_copy, **TOL)
    assert torch.allclose(metrics["clm loss"], want_clm, **TOL)
    assert torch.allclose(total, 7.0 * want_copy + want_clm + 3.0 * want_scl, **TOL)
    counts = objective._counts
    assert counts["replaced_tokens"] == 2 and counts["original_tokens"] == int(keep.sum()) - 2


def check_sampling():
    """The vocab-parallel Gumbel-max draw is argmax(z + g) over the full vocabulary, identical on all TP ranks."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, V, generator=g) * 3
    z[:, -2:] = -1e30  # padded vocabulary entries
    keys = row_keys(1234, torch.arange(40) // 4 + 10_000_000_000, torch.arange(40) % 4)
    got = vocab_parallel_gumbel_sample(shard_of(z), keys)
    assert torch.equal(got, (z + gumbel_noise(keys, 0, V)).argmax(-1))
    assert all(torch.equal(got, part) for part in gathered(got).split(len(got)))  # each TP rank's draw
    assert (got < V - 2).all()


def test_terms_match_naive_references_tp1(single_process):
    check_terms()
    check_objective_combines_the_terms()
    check_sampling()


def test_gumbel_max_draws_from_the_softmax():
    """20k rows with the same logits and distinct keys: frequencies within 0.01 of softmax(z) (sd ~0.0035)."""
    z = torch.tensor([2.0, 0.0, -1.0, 1.0, 0.5, -3.0])
    n = 20_000
    keys = row_keys(7, torch.arange(n), torch.zeros(n, dtype=torch.long))
    draws = (z + gumbel_noise(keys, 0, len(z))).argmax(-1)
    freq = torch.bincount(draws, minlength=len(z)).float() / n
    assert torch.allclose(freq, torch.softmax(z, 0), atol=0.01), (freq, torch.softmax(z, 0))
    assert not torch.equal(draws[: n // 2], draws[n // 2:])


def _tp2_worker(rank, world):
    runtime.init_model_parallel(2, 1)
    check_terms()
    check_objective_combines_the_terms()
    check_sampling()


@pytest.mark.slow
def test_terms_and_sampling_on_tp2_vocabulary_shards():
    spawn(_tp2_worker, 2)


def test_crop_keeps_one_contiguous_span():
    objective = CocoLM(RunConfig(model=model_preset("tiny"), objective=CocoLMConfig(objective="coco-lm", scl=True,
                                                                                     scl_crop_ratio=0.5)))
    objective.vocab = type("Vocab", (), {"pad_id": 0})()
    tokens = torch.tensor([2, 10, 11, 12, 13, 14, 15, 3, 0, 0])
    crop = objective.crop(tokens, (tokens != 0).long(), sample_id=5)
    assert crop[0] == 2 and crop[4] == 3 and (crop[5:] == 0).all()  # [CLS] + 3 of the 6 content tokens + [SEP]
    inner = crop[1:4]
    assert torch.equal(inner, torch.arange(int(inner[0]), int(inner[0]) + 3))
    assert torch.equal(crop, objective.crop(tokens, (tokens != 0).long(), sample_id=5))


def test_flops_count_the_generator_and_the_crop_pass():
    """FLOPs per token = the MLM model's (projection head: no dense transform; plus the copy head) + the
    generator's 3 x forward + with SCL one more 3 x forward of the main model without head."""
    run = RunConfig(model=model_preset("tiny"))
    coco = {scl: CocoLM(replace(run, objective=CocoLMConfig(objective="coco-lm", generator_num_layers=1, scl=scl)))
            for scl in (False, True)}
    generator = 3 * forward_flops_per_token(coco[False].generator_config(), run.data.seq_length, run.data.mask_prob,
                                            run.train.micro_batch_size)
    main = coco[False].flops_per_token() - generator
    h, f = run.model.hidden_size, run.data.mask_prob
    assert main == pytest.approx(MaskedLM(run).flops_per_token() + 3 * (2 * h - 2 * f * h * h))
    crop = coco[True].flops_per_token() - coco[False].flops_per_token()
    assert crop == pytest.approx(3 * forward_flops_per_token(run.model, run.data.seq_length, 0.0,
                                                             run.train.micro_batch_size))
