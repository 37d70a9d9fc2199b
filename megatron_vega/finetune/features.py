"""From SuperGLUE instances to token sequences the heads read, and from head outputs back to instance scores.

* Sequences are ``[CLS] a [SEP] b [SEP]`` (``[CLS] a [SEP]`` without b), cut to ``--seq-length`` longest-first.
* Char spans become token spans through sentencepiece's own offsets (``encode(..., return_type="proto")`` gives
  each piece's byte range in the original text, so normalisation and multi-byte characters cannot shift them):
  a span covers every token whose characters overlap it. A span truncated away points at [CLS].
* Three kinds of samples (one sample = what one training unit feeds the head):
  - ``classify``: one sequence, one logit row (pair tasks, MultiRC answers, WiC/WSC with their two spans);
  - ``choice`` (COPA): one sequence per option, one row of option logits, label = the right option;
  - ``mentions`` (ReCoRD): one (query, passage window) sequence; one row per entity mention in the window,
    labelled 1 for mentions of a gold entity (DeBERTa's span scoring, docs/superglue_formats.md).
"""
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import sentencepiece as spm
import torch

from megatron_vega.data.tokenizer import VegaTokenizer
from megatron_vega.superglue.formats import Instance

PLACEHOLDER = "@placeholder"
NO_SCORE = -1e9  # a ReCoRD candidate none of whose mentions fit in any window


def sample_kind(task: str) -> str:
    return {"COPA": "choice", "ReCoRD": "mentions"}.get(task, "classify")


@dataclass(frozen=True)
class Sample:
    sequences: tuple[tuple[int, ...], ...]
    spans: tuple[tuple[int, int, int], ...]  # (sequence, token start, token end exclusive)
    labels: tuple[int, ...]  # class per logit row; -1 when unlabelled
    rows: tuple[tuple[int, int], ...]  # per logit row: (instance index, mention index) it scores


@dataclass(frozen=True)
class Pieces:
    ids: np.ndarray
    starts: np.ndarray  # char offset of each piece in the text
    ends: np.ndarray


class TextEncoder:
    def __init__(self, tokenizer: VegaTokenizer, seq_length: int):
        self.sp = spm.SentencePieceProcessor(model_file=tokenizer.path)
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = (tokenizer.cls_id, tokenizer.sep_id,
                                                               tokenizer.mask_id, tokenizer.pad_id)
        self.seq_length = seq_length
        self._cache: dict[str, Pieces] = {}  # passages repeat across MultiRC answers and ReCoRD queries

    def pieces(self, text: str) -> Pieces:
        if text not in self._cache:
            proto = self.sp.encode(text, return_type="proto").pieces
            if text.isascii():
                char_at = np.arange(len(text) + 1)
            else:
                char_at = np.append(np.repeat(np.arange(len(text)), [len(c.encode()) for c in text]), len(text))
            self._cache[text] = Pieces(np.array([p.id for p in proto], dtype=np.int64),
                                       char_at[[p.begin for p in proto]], char_at[[p.end for p in proto]])
        return self._cache[text]

    def encode(self, text_a: str, text_b: str | None = None, spans=()) -> tuple[tuple[int, ...], list]:
        """Token ids of the pair and the token span of each ``formats.Span``."""
        segments = [self.pieces(text_a)] + ([self.pieces(text_b)] if text_b is not None else [])
        lengths = truncated_lengths([len(p.ids) for p in segments], self.seq_length - len(segments) - 1)
        ids, offsets = [self.cls_id], []
        for piece, n in zip(segments, lengths):
            offsets.append(len(ids))
            ids += piece.ids[:n].tolist() + [self.sep_id]
        token_spans = [token_span(segments[s.segment], lengths[s.segment], offsets[s.segment], s.start, s.end)
                       for s in spans]
        return tuple(ids), token_spans

    def query_ids(self, query: str) -> list[int]:
        """A ReCoRD query with [MASK] where the answer goes (split first: a foreign tokenizer may not know
        the literal "[MASK]")."""
        before, after = query.split(PLACEHOLDER, 1)
        return self.pieces(before).ids.tolist() + [self.mask_id] + self.pieces(after).ids.tolist()


def truncated_lengths(lengths: list[int], budget: int) -> list[int]:
    """Longest-first truncation: the longer segment loses tokens until both fit (ties cut the second)."""
    if sum(lengths) <= budget:
        return list(lengths)
    if len(lengths) == 1:
        return [budget]
    a, b = lengths
    if min(a, b) <= budget // 2:
        return [a, budget - a] if a < b else [budget - b, b]
    return [budget - budget // 2, budget // 2]


def token_span(pieces: Pieces, kept: int, offset: int, start: int, end: int) -> tuple[int, int]:
    """Tokens (among the ``kept`` first, placed at ``offset``) overlapping chars [start, end); [CLS] if none."""
    hit = np.flatnonzero((pieces.starts[:kept] < end) & (pieces.ends[:kept] > start))
    return (offset + int(hit[0]), offset + int(hit[-1]) + 1) if len(hit) else (0, 1)


def window_starts(length: int, width: int) -> list[int]:
    """Passage windows of ``width`` tokens, half overlapping, the last one flush with the end."""
    stride = max(width // 2, 1)
    starts = list(range(0, max(length - width, 0) + 1, stride))
    if starts[-1] + width < length:
        starts.append(length - width)
    return starts


def _label(inst: Instance) -> int:
    return -1 if inst.label is None else inst.label


def _groups(instances: Sequence[Instance]):
    """(first index, members) per group; options of one question are adjacent (formats.build_instances)."""
    for _, members in groupby(enumerate(instances), key=lambda item: item[1].group):
        members = list(members)
        yield members[0][0], [inst for _, inst in members]


def _mention_samples(enc: TextEncoder, instances, training: bool) -> list[Sample]:
    out = []
    for first, members in _groups(instances):
        passage = enc.pieces(members[0].text_a)
        query = enc.query_ids(members[0].text_b)[: (enc.seq_length - 3) // 2]
        width = enc.seq_length - 3 - len(query)
        mentions = []  # (instance, mention, token start, token end) in passage tokens
        for k, inst in enumerate(members):
            for j, span in enumerate(inst.spans):
                hit = np.flatnonzero((passage.starts < span.end) & (passage.ends > span.start))
                if len(hit):
                    mentions.append((first + k, j, int(hit[0]), int(hit[-1]) + 1))
        for ws in window_starts(len(passage.ids), width):
            inside = [m for m in mentions if ws <= m[2] and m[3] <= ws + width]
            labels = tuple(_label(instances[m[0]]) for m in inside)
            if not inside or (training and 1 not in labels):  # DeBERTa trains on windows holding an answer
                continue
            ids = [enc.cls_id, *passage.ids[ws:ws + width].tolist(), enc.sep_id, *query, enc.sep_id]
            out.append(Sample((tuple(ids),), tuple((0, 1 + s - ws, 1 + e - ws) for _, _, s, e in inside), labels,
                              tuple((i, j) for i, j, _, _ in inside)))
    return out


def make_samples(task: str, enc: TextEncoder, instances: Sequence[Instance], training: bool) -> list[Sample]:
    """Samples of a task's instances; ``training`` keeps only the ReCoRD windows that hold an answer."""
    kind = sample_kind(task)
    if kind == "mentions":
        return _mention_samples(enc, instances, training)
    if kind == "choice":
        out = []
        for first, members in _groups(instances):
            labels = [_label(inst) for inst in members]
            out.append(Sample(tuple(enc.encode(inst.text_a, inst.text_b)[0] for inst in members), (),
                              (labels.index(1) if 1 in labels else -1,), ((first, 0),)))
        return out
    out = []
    for i, inst in enumerate(instances):
        ids, spans = enc.encode(inst.text_a, inst.text_b, inst.spans)
        out.append(Sample((ids,), tuple((0, s, e) for s, e in spans), (_label(inst),), ((i, 0),)))
    return out


def collate(samples: Sequence[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the micro-batch; spans re-indexed to the batch's sequences."""
    sequences = [seq for sample in samples for seq in sample.sequences]
    tokens = torch.full((len(sequences), max(map(len, sequences))), pad_id, dtype=torch.long)
    padding_mask = torch.zeros_like(tokens)
    for i, seq in enumerate(sequences):
        tokens[i, :len(seq)] = torch.tensor(seq)
        padding_mask[i, :len(seq)] = 1
    spans, base = [], 0
    for sample in samples:
        spans += [(base + s, start, end) for s, start, end in sample.spans]
        base += len(sample.sequences)
    return {"tokens": tokens, "padding_mask": padding_mask,
            "spans": torch.tensor(spans, dtype=torch.long).view(-1, 3),
            "labels": torch.tensor([y for sample in samples for y in sample.labels], dtype=torch.long)}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def instance_scores(task: str, instances: Sequence[Instance], samples: Sequence[Sample],
                    logits: Sequence[np.ndarray], kind: str | None = None) -> tuple[np.ndarray, dict]:
    """Per-instance class scores for ``formats.predictions_from_scores``, and the model's confidence in each
    prediction (by prediction key: instance key, COPA/ReCoRD group) for transductive filtering.

    COPA: option k scores (0, z_k). ReCoRD: a mention's log-sigmoid averaged over the windows holding it, a
    candidate's score the best of its mentions (DeBERTa's inference), as (0, score)."""
    kind = kind or sample_kind(task)  # cloze scores ReCoRD's candidates as choices
    if kind == "classify":
        scores = np.stack([z[0] for z in logits])
        return scores, {inst.key: float(p.max()) for inst, p in zip(instances, _softmax(scores))}
    scores = np.zeros((len(instances), 2))
    confidence = {}
    if kind == "choice":
        for sample, z in zip(samples, logits):
            first = sample.rows[0][0]
            options = sum(1 for inst in instances[first:first + len(z[0])] if inst.group == instances[first].group)
            scores[first:first + options, 1] = z[0][:options]  # a row may be wider than its group (padding)
            confidence[instances[first].group] = float(_softmax(z[0][:options]).max())
        return scores, confidence
    per_mention: dict[tuple[int, int], list[float]] = {}
    for sample, z in zip(samples, logits):
        margins = torch.from_numpy(z[:, 1] - z[:, 0])
        for row, value in zip(sample.rows, torch.nn.functional.logsigmoid(margins).tolist()):
            per_mention.setdefault(row, []).append(value)
    scores[:, 1] = NO_SCORE
    for (i, _), values in per_mention.items():
        scores[i, 1] = max(scores[i, 1], float(np.mean(values)))
    for inst, s in zip(instances, scores[:, 1]):
        confidence[inst.group] = max(confidence.get(inst.group, 0.0), float(np.exp(s)))
    return scores, confidence
