"""Cloze fine-tuning (``finetune_superglue.py --format cloze``, docs/glm_and_cloze.md): a task becomes a pattern
with one blank, and the encoder's own language-model head scores the answers there; no new head.

* Style ``glm`` (a GLM-pretrained checkpoint): the pattern is Part A; the answer is read as the first step of
  blank infilling: [sop] appended at the blank's position 1 and position 2 = 1, the logits read at [sop]
  (single-token answers) or Σ log p(a1 … am [eop]) over Part B = [sop] a1 … am (multi-token answers).
* Style ``pet`` (an MLM checkpoint): the logits at [MASK] (single-token answers), or the blank widened to m
  [MASK]s and Σ log p(ai) at the i-th one (multi-token answers).
* Single-token answers give class logits = the verbalizer columns of the vocab-parallel logits (no softmax over
  the vocabulary); multi-token answers give class scores = the summed log-probabilities. Either way the loss is
  cross-entropy over the classes (COPA: over its two answers; ReCoRD: over its candidate entities). A task whose
  verbalizer words are not all single tokens of the tokenizer is scored the multi-token way.
* P-tuning (``--prompt-encoder lstm`` or ``mlp``): each [P] of the pattern becomes ``--cloze-prompt-length``
  positions whose input vectors are the prompt encoder's outputs (placed through the embedding hook), trained
  with their own learning rate ``--cloze-prompt-lr`` beside the backbone's ``--lr``. Without it [P] is dropped.
"""
from dataclasses import dataclass, replace

import torch
from megatron.core import parallel_state
from megatron.core.optimizer import ParamKey
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region
from megatron.core.transformer.module import MegatronModule

from megatron_vega import runtime
from megatron_vega.data.glm_blanks import glm_special_ids
from megatron_vega.errors import VegaInputError
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model
from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.model.weights import init_weights
from megatron_vega.prompt.prompt import PromptEncoder
from megatron_vega.superglue.formats import build_instances

A, B, MASK, P = "{a}", "{b}", "{mask}", "{p}"
# Per task: the pattern (literal text and the fields a / b, the blank, the P-tuning slot) and the verbalizer
# (one word per class, in label_names order). Adapted from GLM's and P-tuning's default SuperGLUE patterns.
PATTERNS = {
    "RTE": (['"', B, '" ?', P, MASK, ', "', A, '"'], ("Yes", "No")),
    "CB": ([B, "?", P, MASK, ".", A], ("Yes", "No", "Maybe")),
    "BoolQ": ([A, ". Question:", B, "?", P, "Answer:", MASK, "."], ("No", "Yes")),
    "COPA": (['"', "{c1}", '" or "', "{c2}", '"?', A, P, MASK, "."], None),  # answers: the choices' texts
    # WiC: {w} the word of sentence 1; WSC: a yes/no question on the candidate referent {n} of the pronoun {pr};
    # MultiRC: one question per answer option {ans} of question {q}
    "WiC": ([A, B, "Does", "{w}", "have the same meaning in both sentences?", P, MASK], ("No", "Yes")),
    "WSC": ([A, P, "Does the pronoun", "{pr}", "refer to", "{n}", "?", MASK, "."], ("No", "Yes")),
    "MultiRC": ([A, ". Question:", "{q}", "? Is it", "{ans}", "?", P, MASK, "."], ("No", "Yes")),
    # ReCoRD: the query with its @placeholder as the blank; answers: the passage's candidate entities
    "ReCoRD": ([A, P, "{before}", MASK, "{after}"], None),
}


def pattern_fields(inst) -> dict[str, str]:
    """The texts an instance puts into its task's pattern (COPA: ClozeEncoder._copa)."""
    if inst.task == "WiC":
        word = inst.spans[0]
        return {A: inst.text_a, B: inst.text_b, "{w}": inst.text_a[word.start:word.end]}
    if inst.task == "WSC":
        noun, pronoun = (inst.text_a[s.start:s.end] for s in inst.spans)
        return {A: inst.text_a, "{n}": noun, "{pr}": pronoun}
    if inst.task == "MultiRC":  # text_b is "question answer"; option carries the answer (multirc_instances)
        return {A: inst.text_a, "{q}": inst.text_b[:len(inst.text_b) - len(inst.option)].rstrip(),
                "{ans}": inst.option}
    return {A: inst.text_a, B: inst.text_b or ""}


def multirc_instances(examples) -> list:
    """MultiRC's instances (superglue.formats) with each answer option's text in ``option``, so that the pattern
    can put the question and the answer apart."""
    answers = [a.text for ex in examples for q in ex.questions for a in q.answers]
    return [replace(inst, option=text) for inst, text in zip(build_instances("MultiRC", examples), answers)]
@dataclass(frozen=True)
class ClozeSequence:
    tokens: tuple[int, ...]
    pos1: tuple[int, ...] | None      # GLM style: position 1 (None: 0 … s-1)
    pos2: tuple[int, ...] | None      # GLM style: position 2
    prefix: int | None                # GLM style: |Part A|
    slots: tuple[int, ...]            # 0, or j + 1 at the j-th prompt vector's position
    reads: tuple[int, ...]            # positions whose logits are read
    targets: tuple[int, ...]          # multi-token: the gold id at each read; single-token: -1


@dataclass(frozen=True)
class ClozeSample:
    sequences: tuple[ClozeSequence, ...]  # one, or one per class / answer (multi-token scoring)
    labels: tuple[int, ...]
    rows: tuple[tuple[int, int], ...]     # (instance index, 0) per logit row, as features.Sample


class ClozeEncoder:
    """Instances -> ClozeSamples for one task, style and prompt length."""

    def __init__(self, task: str, tokenizer, seq_length: int, style: str, glm_ids, prompt_length: int):
        if task not in PATTERNS:
            raise VegaInputError("--format", f"cloze patterns exist for {', '.join(PATTERNS)}, not {task}")
        self.task, self.tokenizer, self.seq_length, self.style = task, tokenizer, seq_length, style
        self.glm_ids, self.prompt_length = glm_ids, prompt_length
        self.pattern, words = PATTERNS[task]
        self.answers = None if words is None else [self.words(w) for w in words]
        self.single_token = self.answers is not None and all(len(a) == 1 for a in self.answers)

    def words(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def _pattern_ids(self, fields: dict[str, str], answer_room: int) -> tuple[list[int], int, list[int]]:
        """[CLS] pattern [SEP] ids, the blank's index and prompt slot marks, longest field cut to fit."""
        parts = {k: self.words(v) for k, v in fields.items()}
        fixed = 2 + answer_room + sum(self.prompt_length if p == P else 0 if p == MASK else
                                      len(self.words(p)) for p in self.pattern if p not in fields)
        while fixed + sum(map(len, parts.values())) > self.seq_length:
            longest = max(parts, key=lambda k: len(parts[k]))
            if not parts[longest]:
                raise VegaInputError("--seq-length", f"{self.seq_length} cannot hold the {self.task} cloze pattern")
            parts[longest] = parts[longest][:-1]
        ids, slots, blank = [self.tokenizer.cls_id], [0], -1
        for piece in self.pattern:
            if piece == MASK:
                blank = len(ids)
                ids.append(self.tokenizer.mask_id)
                slots.append(0)
            elif piece == P:
                ids += [self.tokenizer.unk_id] * self.prompt_length
                slots += list(range(1, self.prompt_length + 1))
            else:
                chunk = parts[piece] if piece in parts else self.words(piece)
                ids += chunk
                slots += [0] * len(chunk)
        return ids + [self.tokenizer.sep_id], blank, slots + [0]

    def sequence(self, fields: dict[str, str], answer: list[int] | None) -> ClozeSequence:
        """One sequence: single-token reading (answer None) or the answer's tokens scored."""
        glm = self.style == "glm"
        room = (len(answer) + 1 if glm else len(answer) - 1) if answer else (1 if glm else 0)
        ids, blank, slots = self._pattern_ids(fields, room)
        if not glm:
            if not answer:
                return ClozeSequence(tuple(ids), None, None, None, tuple(slots), (blank,), (-1,))
            width = len(answer)  # the blank widened to one [MASK] per answer token
            ids = ids[:blank] + [self.tokenizer.mask_id] * width + ids[blank + 1:]
            slots = slots[:blank] + [0] * width + slots[blank + 1:]
            return ClozeSequence(tuple(ids), None, None, None, tuple(slots), tuple(range(blank, blank + width)),
                                 tuple(answer))
        prefix = len(ids)
        part_b = [self.glm_ids.sop] + (answer or [])
        tokens = ids + part_b
        pos1 = list(range(prefix)) + [blank] * len(part_b)
        pos2 = [0] * prefix + list(range(1, len(part_b) + 1))
        reads = tuple(range(prefix, len(tokens)))
        targets = tuple(answer + [self.glm_ids.eop]) if answer else (-1,)
        return ClozeSequence(tuple(tokens), tuple(pos1), tuple(pos2), prefix, tuple(slots + [0] * len(part_b)),
                             reads if answer else (prefix,), targets)

    def samples(self, instances) -> list[ClozeSample]:
        if self.task == "COPA":
            return self._copa(instances)
        if self.task == "ReCoRD":
            return self._record(instances)
        out = []
        for i, inst in enumerate(instances):
            fields = pattern_fields(inst)
            label = -1 if inst.label is None else inst.label
            if self.single_token:
                seqs = (self.sequence(fields, None),)
            else:
                seqs = tuple(self.sequence(fields, answer) for answer in self.answers)
            out.append(ClozeSample(seqs, (label,), ((i, 0),)))
        return out

    def _copa(self, instances) -> list[ClozeSample]:
        """Instances in the connective style (text_a "premise because|so", text_b a choice), two per question."""
        out = []
        for first in range(0, len(instances), 2):
            pair = instances[first:first + 2]
            choices = [inst.text_b for inst in pair]
            fields = {A: pair[0].text_a, "{c1}": choices[0], "{c2}": choices[1]}
            answers = [self.words(c[:1].lower() + c[1:].rstrip(".")) for c in choices]
            labels = [inst.label for inst in pair]
            label = labels.index(1) if 1 in labels else -1
            out.append(ClozeSample(tuple(self.sequence(fields, a) for a in answers), (label,), ((first, 0),)))
        return out


    def _record(self, instances) -> list[ClozeSample]:
        """One sample per query (its instances are adjacent, one per candidate entity): every candidate scored by
        Σ log p of its tokens at the blank; the label is the first right candidate (-100, ignored by the loss, when
        none is or the data has no labels)."""
        out, first = [], 0
        while first < len(instances):
            last = first
            while last < len(instances) and instances[last].group == instances[first].group:
                last += 1
            group = instances[first:last]
            before, _, after = group[0].text_b.partition("@placeholder")
            fields = {A: group[0].text_a, "{before}": before.strip(), "{after}": after.strip()}
            labels = [inst.label for inst in group]
            answers = [self.words(inst.option) for inst in group]
            out.append(ClozeSample(tuple(self.sequence(fields, a) for a in answers),
                                   (labels.index(1) if 1 in labels else -100,), ((first, 0),)))
            first = last
        return out


def collate_cloze(samples, pad_id: int) -> dict[str, torch.Tensor]:
    """Sequences padded to the longest; reads as flat sequence-major ``lm_positions`` with the row and class each
    read scores (multi-token) or the row it gives the logits of (single-token)."""
    sequences = [(k, c, seq) for k, sample in enumerate(samples) for c, seq in enumerate(sample.sequences)]
    n, s = len(sequences), max(len(seq.tokens) for _, _, seq in sequences)
    tokens = torch.full((n, s), pad_id, dtype=torch.long)
    padding, slots = torch.zeros_like(tokens), torch.zeros_like(tokens)
    pos1, pos2 = torch.zeros_like(tokens), torch.zeros_like(tokens)
    prefix = torch.full((n,), s, dtype=torch.long)
    reads, rows, classes, targets = [], [], [], []
    glm = sequences[0][2].pos1 is not None
    for i, (k, c, seq) in enumerate(sequences):
        length = len(seq.tokens)
        tokens[i, :length] = torch.tensor(seq.tokens)
        padding[i, :length] = 1
        slots[i, :length] = torch.tensor(seq.slots)
        if glm:
            pos1[i, :length], pos2[i, :length] = torch.tensor(seq.pos1), torch.tensor(seq.pos2)
            prefix[i] = seq.prefix
        reads += [r * n + i for r in seq.reads]  # flat index of (position r, sequence i) in [s, n]
        rows += [k] * len(seq.reads)
        classes += [c] * len(seq.reads)
        targets += list(seq.targets)
    order = torch.tensor(reads).argsort()  # the head returns the reads in flat order
    batch = {"tokens": tokens, "padding_mask": padding, "prompt_slots": slots,
             "lm_positions": torch.tensor(reads)[order], "read_rows": torch.tensor(rows)[order],
             "read_classes": torch.tensor(classes)[order], "read_targets": torch.tensor(targets)[order],
             "labels": torch.tensor([y for sample in samples for y in sample.labels], dtype=torch.long)}
    if glm:
        batch.update(position_ids=pos1, block_position_ids=pos2, prefix_lengths=prefix)
    return batch


def verbalizer_logits(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The columns ``ids`` of vocab-parallel logits [r, V/tp] -> [r, K] on every rank: each rank fills the columns
    it owns, an all-reduce (autograd-aware) completes them."""
    per = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * per
    wanted = torch.tensor(ids, device=logits.device)
    local = (wanted >= start) & (wanted < start + per)
    out = logits.new_zeros(logits.shape[0], len(ids))
    out[:, local] = logits[:, wanted[local] - start]
    return reduce_from_tensor_model_parallel_region(out)


class ClozeModel(MegatronModule):
    """The encoder with its language-model head (the pretraining one, loaded from the checkpoint) and an optional
    prompt encoder; forward(batch) -> class logits [rows, classes] like a TaskModel."""

    def __init__(self, encoder, cloze: ClozeEncoder, prompt_encoder=None):
        super().__init__(config=encoder.config)
        self.encoder, self.cloze = encoder, cloze
        # the checkpoint's "head": the prompt encoder (saved and loaded with the encoder), else nothing
        self.head = prompt_encoder if prompt_encoder is not None else torch.nn.Module()
        self.prompt_encoder = prompt_encoder

    def forward(self, batch):
        attention = AttentionInputs.from_batch(batch)
        if self.prompt_encoder is None:
            logits = self.encoder(batch["tokens"], attention, lm_positions=batch["lm_positions"])
        else:
            vectors, slots = self.prompt_encoder(), batch["prompt_slots"].t()  # [k, H], [s, b]

            def place_prompt(words, tokens):
                chosen = vectors[(slots - 1).clamp(min=0)].to(words.dtype)
                return torch.where((slots > 0)[..., None], chosen, words)

            with self.encoder.embedding_hook(place_prompt):
                logits = self.encoder(batch["tokens"], attention, lm_positions=batch["lm_positions"])
        rows = len(batch["labels"])
        if self.cloze.single_token:
            return verbalizer_logits(logits, [a[0] for a in self.cloze.answers])[batch["read_rows"].argsort()]
        log_probs = -vocab_parallel_cross_entropy(logits.clone(), batch["read_targets"])
        classes = int(batch["read_classes"].max()) + 1
        scores = log_probs.new_zeros(rows, classes)
        scores = scores.index_put((batch["read_rows"], batch["read_classes"]), log_probs, accumulate=True)
        # a row with fewer answers than the batch's widest (ReCoRD's candidates): its missing ones never win
        present = torch.zeros_like(scores, dtype=torch.bool).index_put((batch["read_rows"], batch["read_classes"]),
                                                                       torch.tensor(True, device=scores.device))
        return scores.masked_fill(~present, -1e4)


def cloze_style(requested: str, model_cfg) -> str:
    glm_pretrained = model_cfg.block_position_embeddings > 0 or model_cfg.block_positions_relative
    if requested == "glm" and not glm_pretrained:
        raise VegaInputError("--cloze-style", "glm needs a GLM-pretrained checkpoint (pretrain_vega.py --objective "
                                              "glm); use pet")
    return requested if requested != "auto" else ("glm" if glm_pretrained else "pet")


def build_cloze_model(run, splits, model_cfg, tokenizer, tc) -> ClozeModel:
    """The cloze model of the run (seeded weights; the checkpoint is loaded on top by the caller). COPA's splits
    are re-read in the connective layout the pattern needs, MultiRC's with the answer texts apart."""
    t, o, cz, p = run.task, run.optim, run.cloze, run.prompt
    if run.sift.sift or p.prompt_tuning:
        raise VegaInputError("--format", "cloze does not combine with --sift or --prompt-tuning (use "
                                         "--prompt-encoder for P-tuning's continuous prompt)")
    style = cloze_style(cz.cloze_style, model_cfg)
    glm_ids = glm_special_ids(model_cfg.vocab_size, tokenizer) if style == "glm" else None
    with_prompt = p.prompt_encoder != "none"
    cloze = ClozeEncoder(t.task, tokenizer, o.seq_length, style, glm_ids, cz.cloze_prompt_length if with_prompt else 0)
    for split in splits:
        if split is not None and split.task == "COPA":
            split.instances = build_instances("COPA", split.examples, copa_style="connective")
        if split is not None and split.task == "MultiRC":
            split.instances = multirc_instances(split.examples)
    [encoder] = build_model(model_cfg, tc, heads=(MLM_HEAD,))
    init_weights([encoder], o.seed)
    prompt_encoder = None
    if with_prompt:
        slots = PATTERNS[t.task][0].count(P) * cz.cloze_prompt_length
        prompt_encoder = PromptEncoder(slots, model_cfg.hidden_size, model_cfg.hidden_size, p.prompt_encoder,
                                       p.prompt_hidden_size)
        prompt_encoder.reset_parameters(o.seed)
        for param in prompt_encoder.parameters():
            param.cloze_prompt = True  # the second learning-rate group (optimizer_overrides)
        prompt_encoder = prompt_encoder.to(device=runtime.device(), dtype=tc.params_dtype)
    model = ClozeModel(encoder, cloze, prompt_encoder)
    model.optimizer_overrides = {ParamKey(attr="cloze_prompt"): {"max_lr": cz.cloze_prompt_lr,
                                                                 "min_lr": 0.0}} if with_prompt else None
    return model
