"""Cloze fine-tuning (finetune/cloze.py): the sequences each style builds, the scores against a naive full-vocabulary
reference, TP=2 equal to TP=1, and P-tuning's second learning-rate group."""
import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig
from megatron_vega.data.glm_blanks import GLMSpecialIds
from megatron_vega.data.tokenizer import SyntheticVocab
from megatron_vega.finetune.cloze import ClozeEncoder, ClozeModel, collate_cloze
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model, transformer_config
from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.model.weights import init_weights
from megatron_vega.prompt.prompt import PromptEncoder
from megatron_vega.superglue.formats import Instance
from tests.distributed import spawn
from tests.model.helpers import tiny_config

IDS = GLMSpecialIds(mask=4, sop=996, eop=997, smask=998, gmask=999, pad=0)


class WordTokenizer(SyntheticVocab):
    """One id per word (stable hash), enough to lay patterns out; 'Maybe' is two tokens."""

    def __init__(self):
        super().__init__(996)

    def encode(self, text):
        if text == "Maybe":
            return [30, 31]
        return [10 + sum(map(ord, w)) % 900 for w in text.split()]


def _instances(task):
    if task == "ReCoRD":  # two queries, with three and two candidates
        return [Instance("ReCoRD", q, "the man walks in the park", f"the @placeholder walks {q}", int(c == 0),
                         group=q, option=name) for q, names in ((0, ("man", "park", "big dog")), (1, ("park", "man")))
                for c, name in enumerate(names)]
    if task == "COPA":
        return [Instance("COPA", 0, "The man fell because", "He slipped.", 1, group=0, option=0),
                Instance("COPA", 0, "The man fell because", "He sang a song.", 0, group=0, option=1)]
    return [Instance(task, i, "a man walks in the park today", "a man walks", i % 2) for i in range(3)]


def test_glm_and_pet_sequences():
    tok = WordTokenizer()
    glm = ClozeEncoder("RTE", tok, 64, "glm", IDS, prompt_length=0)
    assert glm.single_token
    [seq] = glm.samples(_instances("RTE"))[0].sequences
    blank = seq.tokens.index(tok.mask_id)
    assert seq.tokens[-1] == IDS.sop and seq.tokens[-2] == tok.sep_id and seq.prefix == len(seq.tokens) - 1
    assert seq.pos1[-1] == blank and seq.pos2[-1] == 1 and seq.reads == (len(seq.tokens) - 1,)
    # CB's "Maybe" has two tokens: every class is scored by Σ log p over its answer + [eop]
    cb = ClozeEncoder("CB", tok, 64, "glm", IDS, prompt_length=2)
    seqs = cb.samples(_instances("CB"))[0].sequences
    assert len(seqs) == 3 and seqs[2].targets == (30, 31, IDS.eop) and seqs[2].pos2[-3:] == (1, 2, 3)
    assert sum(1 for s in seqs[0].slots if s) == 2  # the [P] slot became two prompt positions
    pet = ClozeEncoder("CB", tok, 64, "pet", None, prompt_length=0)
    maybe = pet.samples(_instances("CB"))[0].sequences[2]
    assert [maybe.tokens[r] for r in maybe.reads] == [tok.mask_id] * 2 and maybe.targets == (30, 31)
    copa = ClozeEncoder("COPA", tok, 64, "glm", IDS, prompt_length=0).samples(_instances("COPA"))
    assert len(copa) == 1 and len(copa[0].sequences) == 2 and copa[0].labels == (0,)


def _naive_scores(model, batch, cloze):
    """Full-vocabulary logits at every position, then the class scores by hand."""
    encoder = model.encoder
    full = encoder(batch["tokens"], AttentionInputs.from_batch(batch))  # [s, n, V/tp]
    parts = [torch.empty_like(full) for _ in range(parallel_state.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, full.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    full = torch.cat(parts, dim=-1).transpose(0, 1)  # [n, s, V]
    n = full.shape[0]
    flat = full.reshape(-1, full.shape[-1])  # batch-major here
    positions = batch["lm_positions"]
    rows_at = flat[(positions % n) * full.shape[1] + positions // n]
    if cloze.single_token:
        ids = [a[0] for a in cloze.answers]
        return rows_at[:, ids][batch["read_rows"].argsort()]
    log_probs = torch.log_softmax(rows_at.double(), -1).gather(1, batch["read_targets"][:, None])[:, 0]
    scores = torch.zeros(len(batch["labels"]), int(batch["read_classes"].max()) + 1, dtype=torch.double)
    for lp, r, c in zip(log_probs, batch["read_rows"], batch["read_classes"]):
        scores[r, c] += lp
    return scores.float()


def _scores(tp: int):
    runtime.init_model_parallel(tp, 1, seed=3)
    cfg = tiny_config(block_position_embeddings=65)
    [encoder] = build_model(cfg, transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=tp)),
                            heads=(MLM_HEAD,))
    init_weights([encoder], seed=4)
    out = []
    for task, style, prompt in (("RTE", "glm", 0), ("CB", "glm", 2), ("COPA", "pet", 2), ("ReCoRD", "glm", 0)):
        cloze = ClozeEncoder(task, WordTokenizer(), 64, style, IDS, prompt_length=prompt)
        prompt_encoder = None
        if prompt:
            prompt_encoder = PromptEncoder(prompt, cfg.hidden_size, cfg.hidden_size, "lstm", 32)
            prompt_encoder.reset_parameters(5)
        model = ClozeModel(encoder, cloze, prompt_encoder)
        batch = collate_cloze(cloze.samples(_instances(task)), 0)
        with torch.no_grad():
            scores = model(batch)
            if prompt_encoder is None:  # the naive reference has no prompt hook
                naive = _naive_scores(model, batch, cloze)
                if task == "ReCoRD":  # the second query has no third candidate
                    assert scores[1, 2] == -1e4
                    naive[1, 2] = -1e4
                assert torch.allclose(scores, naive, atol=1e-5), task
        out.append(scores)
    parallel_state.destroy_model_parallel()
    return out


def _worker(rank, world):
    for tp1, tp2 in zip(_scores(1), _scores(2)):
        assert torch.allclose(tp1, tp2, atol=1e-5)


@pytest.mark.slow
def test_cloze_scores_match_a_naive_reference_and_tp2_equals_tp1():
    spawn(_worker, 2)


def test_prompt_encoder_gets_its_own_learning_rate(single_process):
    from megatron_vega.finetune.cloze_config import ClozeConfig
    from megatron_vega.finetune.config import FinetuneRun, OptimConfig
    from megatron_vega.finetune.trainer import Finetuner
    from megatron_vega.prompt.config import PromptConfig

    cfg = tiny_config(block_position_embeddings=65)
    tc = transformer_config(cfg, ParallelConfig())
    [encoder] = build_model(cfg, tc, heads=(MLM_HEAD,))
    prompt_encoder = PromptEncoder(2, cfg.hidden_size, cfg.hidden_size, "lstm", 32)
    for p in prompt_encoder.parameters():
        p.cloze_prompt = True
    model = ClozeModel(encoder, ClozeEncoder("RTE", WordTokenizer(), 64, "glm", IDS, 2), prompt_encoder)
    from megatron.core.optimizer import ParamKey
    model.optimizer_overrides = {ParamKey(attr="cloze_prompt"): {"max_lr": 1e-3, "min_lr": 0.0}}
    run = FinetuneRun(optim=OptimConfig(lr=1e-5, epochs=1), prompt=PromptConfig(), cloze=ClozeConfig())
    tuner = Finetuner(model, run.optim, run.sift, 0, collate_fn=collate_cloze)
    optimizer, scheduler = tuner._optimizer_and_schedule(10)
    for _ in range(5):
        scheduler.step(increment=1)
    prompt_ids = {id(p) for p in prompt_encoder.parameters()}
    rates = {}
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in opt.optimizer.param_groups:
            kind = "prompt" if any(id(p) in prompt_ids for p in group["params"]) else "backbone"
            rates.setdefault(kind, set()).add(round(group["lr"] / (1e-3 if kind == "prompt" else 1e-5), 6))
    assert set(rates) == {"prompt", "backbone"}
    # one schedule (same fraction of the peak after 5 steps), two peaks: 1e-3 for the prompt, 1e-5 for the rest
    assert rates["prompt"] == rates["backbone"] and len(rates["prompt"]) == 1 and 0 < min(rates["prompt"]) <= 1


def _contains(tokens, part) -> bool:
    return any(list(tokens[i:i + len(part)]) == part for i in range(len(tokens) - len(part) + 1))


@pytest.mark.parametrize("task", ["WiC", "WSC", "MultiRC"])
def test_wic_wsc_multirc_patterns_on_real_records(task, shared_data):
    """The fields land where the pattern puts them: the word (WiC), the pronoun and the candidate (WSC), the
    question and the answer apart (MultiRC); the blank comes last before the final ".", labels are the data's."""
    from megatron_vega.finetune.cloze import multirc_instances
    from megatron_vega.superglue.formats import build_instances
    from megatron_vega.superglue.readers import read_examples
    examples = read_examples(task, shared_data / "superglue" / "full" / task / "val.jsonl")[:3]
    instances = multirc_instances(examples) if task == "MultiRC" else build_instances(task, examples)
    tok = WordTokenizer()
    cloze = ClozeEncoder(task, tok, 512, "glm", IDS, prompt_length=2)
    samples = cloze.samples(instances)
    assert len(samples) == len(instances) and cloze.single_token
    for inst, sample in zip(instances, samples):
        [seq] = sample.sequences
        assert sample.labels == (inst.label,)
        tokens, blank = list(seq.tokens), seq.pos1[-1]
        assert tokens[blank] == tok.mask_id and seq.tokens[-1] == IDS.sop and sum(1 for s in seq.slots if s) == 2
        if task == "WiC":
            word = inst.text_a[inst.spans[0].start:inst.spans[0].end]
            assert _contains(tokens, tok.encode(f"Does {word} have the same meaning"))
            assert tokens[blank + 1] == tok.sep_id  # "... in both sentences? [P] [MASK]"
        elif task == "WSC":
            noun, pronoun = (inst.text_a[s.start:s.end] for s in inst.spans)
            assert _contains(tokens, tok.encode(f"Does the pronoun {pronoun} refer to {noun} ?"))
            assert tokens[blank + 1:blank + 3] == tok.encode(".") + [tok.sep_id]
        else:
            question = inst.text_b[:len(inst.text_b) - len(inst.option)].rstrip()
            assert inst.text_b == f"{question} {inst.option}"
            assert _contains(tokens, tok.encode(f"{question} ? Is it {inst.option} ?"))
            assert tokens[blank + 1:blank + 3] == tok.encode(".") + [tok.sep_id]


def test_record_pattern_scores_every_candidate(shared_data):
    """ReCoRD: one sample per query, one Part B per candidate entity (its tokens + [eop] as targets), the query's
    @placeholder as the blank, the label the right candidate; a batch of queries with different candidate counts
    gives the missing ones -1e4 (tested in test_cloze_scores_match_a_naive_reference_and_tp2_equals_tp1)."""
    from megatron_vega.superglue.formats import build_instances
    from megatron_vega.superglue.readers import read_examples
    [example] = read_examples("ReCoRD", shared_data / "superglue" / "dev32" / "ReCoRD" / "dev32.jsonl")[:1]
    instances = build_instances("ReCoRD", [example])
    tok = WordTokenizer()
    samples = ClozeEncoder("ReCoRD", tok, 512, "glm", IDS, prompt_length=0).samples(instances)
    assert len(samples) == len(example.queries)
    first = 0
    for query, sample in zip(example.queries, samples):
        group = [inst for inst in instances if inst.group == query.idx]
        assert sample.rows == ((first, 0),) and len(sample.sequences) == len(group)
        assert group[sample.labels[0]].option in query.answers
        before, _, after = query.query.partition("@placeholder")
        for inst, seq in zip(group, sample.sequences):
            blank = seq.pos1[-1]
            assert seq.targets == tuple(tok.encode(inst.option)) + (IDS.eop,)
            assert list(seq.tokens[blank + 1:blank + 1 + len(tok.encode(after))]) == tok.encode(after)
            assert list(seq.tokens[blank - len(tok.encode(before)):blank]) == tok.encode(before)
        first += len(group)


def test_record_predictions_pick_the_best_candidate_of_each_query():
    """The choice path reads a query's row of candidate scores, padding columns left out."""
    import numpy as np

    from megatron_vega.finetune.features import instance_scores
    from megatron_vega.superglue.formats import predictions_from_scores
    instances = _instances("ReCoRD")
    samples = ClozeEncoder("ReCoRD", WordTokenizer(), 64, "glm", IDS, prompt_length=0).samples(instances)
    logits = [np.array([[-5.0, -1.0, -3.0]]), np.array([[-2.0, -4.0, -1e4]])]
    scores, confidence = instance_scores("ReCoRD", instances, samples, logits, "choice")
    assert predictions_from_scores("ReCoRD", instances, scores) == {0: "park", 1: "park"}
    assert set(confidence) == {0, 1} and confidence[1] > 0.8
