"""GLM's autoregressive blank infilling on the host (docs/glm_and_cloze.md): spans are cut out of a block and
replaced by one blank each (Part A), then regenerated left to right after it (Part B).

A sample is a pure function of (seed, block id, epoch), like an MLM sample, so resume and any data-parallel size
read the same samples. Its arrays, all of length ``seq_length``:

- ``tokens``: Part A ‖ Part B inputs ([sop] s1 … sℓ per span, the spans in a random order), then [PAD];
- ``labels``: s1 … sℓ [eop] at Part B's positions, [PAD] elsewhere; ``loss_mask``: 1 on Part B;
- ``position_ids`` (position 1): 0, 1, … along Part A; every token of a span in Part B takes its blank's index;
- ``block_position_ids`` (position 2): 0 on Part A, 1 … ℓ+1 along a span in Part B ([sop] = 1);
- ``prefix_lengths``: |Part A| (the attention mask: key j is visible to query i iff j < |A| or j <= i);
- ``padding_mask``: 1 on Part A and Part B.
"""
from dataclasses import dataclass

import numpy as np

# The four ids GLM adds, in this order, at the top of the model's vocabulary (``glm_special_ids``)
GLM_SPECIALS = ("[sop]", "[eop]", "[sMASK]", "[gMASK]")
SENTENCE_END_CHARS = tuple(".?!;:\n。？！；：")
_GLM_STREAM = 0x474C  # separates GLM's span draws from the MLM masking draws of the same block


@dataclass(frozen=True)
class GLMSpecialIds:
    mask: int     # token-level blank: the tokenizer's [MASK]
    sop: int      # [sop]: opens a span in Part B (the paper's [START])
    eop: int      # [eop]: the last target of a span (the paper's [END])
    smask: int    # sentence-level blank
    gmask: int    # document-level (generation) blank
    pad: int


def glm_special_ids(model_vocab_size: int, vocab) -> GLMSpecialIds:
    """[sop] [eop] [sMASK] [gMASK] are the last four ids of the model's vocabulary (``--vocab-size``), so they are
    real rows of the (padded) embedding and of the output layer; the tokenizer must not use them."""
    first = model_vocab_size - len(GLM_SPECIALS)
    return GLMSpecialIds(vocab.mask_id, first, first + 1, first + 2, first + 3, vocab.pad_id)


@dataclass(frozen=True)
class SpanSettings:
    """The span sampling of one sample (objectives/glm.py's flags)."""
    mask_ratio: float = 0.15        # token level: spans until this share of the text is covered
    span_lambda: float = 3.0        # Poisson mean of a span's length
    max_span: int = 39              # lengths are truncated to 1..max_span (weights renormalised)
    token_prob: float = 1.0         # share of samples with token-level [MASK] spans
    sentence_prob: float = 0.0      # share with sentence-level [sMASK] spans; the rest: one [gMASK] span
    gpt_min_ratio: float = 0.5      # a [gMASK] span covers between this share and all of the text
    gpt_infill_prob: float = 0.5    # share of [gMASK] spans placed at a random place (the others: the suffix)
    shuffle_spans: bool = True      # Part B's span order is random (else the text's order)


def span_length_weights(span_lambda: float, max_span: int) -> np.ndarray:
    """P(ℓ) for ℓ = 1 … max_span: the Poisson(λ) pmf, truncated and renormalised."""
    lengths = np.arange(1, max_span + 1)
    log_pmf = lengths * np.log(span_lambda) - span_lambda - np.cumsum(np.log(lengths))
    weights = np.exp(log_pmf - log_pmf.max())
    return weights / weights.sum()


def place_spans(lengths: list[int], start: int, stop: int, rng) -> list[tuple[int, int]]:
    """Non-overlapping spans of the given lengths (in that order) placed uniformly in [start, stop) with at least
    one free token between two spans: n sorted slots among the free tokens + n (stars and bars)."""
    n, covered = len(lengths), sum(lengths)
    free = (stop - start) - covered - (n - 1)
    if n == 0 or free < 0:
        return []
    slots = np.sort(rng.choice(free + n, size=n, replace=False))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [(start + int(c) + int(o), start + int(c) + int(o) + ln) for c, o, ln in zip(slots, offsets, lengths)]


def token_spans(start: int, stop: int, room: int, settings: SpanSettings, rng) -> list[tuple[int, int]]:
    """Token-level spans in [start, stop): Poisson lengths until they cover mask_ratio of the text, within a
    budget of ``room`` extra sequence positions (each span costs two: its blank leaves one token in Part A for
    ℓ removed, and Part B holds ℓ + 1)."""
    text = stop - start
    target = max(1, int(settings.mask_ratio * text))
    weights = span_length_weights(settings.span_lambda, settings.max_span)
    lengths: list[int] = []
    while sum(lengths) < target and 2 * (len(lengths) + 1) <= room:
        length = int(rng.choice(len(weights), p=weights)) + 1
        if sum(lengths) + length + len(lengths) > text:  # would not fit with one free token between spans
            break
        lengths.append(length)
    rng.shuffle(lengths)
    return place_spans(lengths, start, stop, rng)


def sentence_spans(tokens: np.ndarray, start: int, stop: int, room: int, sentence_end: np.ndarray,
                   settings: SpanSettings, rng) -> list[tuple[int, int]]:
    """Whole sentences (ending at a token whose piece ends with . ? ! ; : or a newline), taken in a random order
    until they cover mask_ratio of the text; returned in text order."""
    ends = [i + 1 for i in range(start, stop) if sentence_end[tokens[i]]]
    bounds = [start] + [e for e in ends if e < stop] + [stop]
    sentences = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    chosen, covered = [], 0
    for k in rng.permutation(len(sentences)):
        if covered >= settings.mask_ratio * (stop - start) or 2 * (len(chosen) + 1) > room:
            break
        chosen.append(sentences[k])
        covered += sentences[k][1] - sentences[k][0]
    return sorted(chosen)


def document_span(start: int, stop: int, settings: SpanSettings, rng) -> list[tuple[int, int]]:
    """One span of gpt_min_ratio … all of the text: the suffix, or (gpt_infill_prob) at a random place."""
    text = stop - start
    length = int(rng.integers(max(1, int(np.ceil(settings.gpt_min_ratio * text))), text + 1))
    if rng.random() < settings.gpt_infill_prob:
        first = int(rng.integers(start, stop - length + 1))
        return [(first, first + length)]
    return [(stop - length, stop)]


def glm_layout(tokens: np.ndarray, spans: list[tuple[int, int]], blank_ids: list[int], order: list[int],
               ids: GLMSpecialIds, seq_length: int | None = None) -> dict[str, np.ndarray]:
    """The sample of ``tokens`` with ``spans`` (sorted [start, stop) ranges, each replaced by its blank id) and
    Part B in ``order`` (indices into spans). Arrays as the module docstring says, padded to ``seq_length``."""
    part_a, blank_at, cursor = [], [], 0
    for (begin, end), blank in zip(spans, blank_ids):
        part_a.extend(tokens[cursor:begin])
        blank_at.append(len(part_a))
        part_a.append(blank)
        cursor = end
    part_a.extend(tokens[cursor:])
    inputs, targets, pos1, pos2 = list(part_a), [ids.pad] * len(part_a), list(range(len(part_a))), [0] * len(part_a)
    for k in order:
        span = [int(t) for t in tokens[spans[k][0]:spans[k][1]]]
        inputs += [ids.sop] + span
        targets += span + [ids.eop]
        pos1 += [blank_at[k]] * (len(span) + 1)
        pos2 += list(range(1, len(span) + 2))
    length = len(inputs)
    total = seq_length or length
    if length > total:
        raise ValueError(f"the GLM sample needs {length} positions but the sequence holds {total}")

    def padded(values, fill):
        return np.asarray(values + [fill] * (total - length), dtype=np.int64)

    return {
        "tokens": padded(inputs, ids.pad),
        "labels": padded(targets, ids.pad),
        "loss_mask": padded([0.0] * len(part_a) + [1.0] * (length - len(part_a)), 0.0).astype(np.float32),
        "padding_mask": padded([1] * length, 0),
        "position_ids": padded(pos1, 0),
        "block_position_ids": padded(pos2, 0),
        "prefix_lengths": np.int64(len(part_a)),
    }


def sentence_end_table(vocab) -> np.ndarray:
    """Per id: True where the token ends a sentence (its piece ends with . ? ! ; : or a newline). A vocabulary
    without pieces (synthetic data) has none, so sentence spans are whole texts there."""
    table = np.zeros(vocab.vocab_size + 8, dtype=bool)
    if hasattr(vocab, "id_to_piece"):
        for i in range(vocab.vocab_size):
            table[i] = (not vocab.is_special[i]) and vocab.id_to_piece(i).endswith(SENTENCE_END_CHARS)
    return table


class GLMDataset:
    """GLM samples from an unmasked MLM dataset whose blocks hold the source text (shorter than ``seq_length``:
    the rest of the sequence takes Part B's extra positions)."""

    def __init__(self, source, ids: GLMSpecialIds, settings: SpanSettings, seq_length: int, seed: int):
        self.source, self.ids, self.settings = source, ids, settings
        self.seq_length, self.seed = seq_length, seed
        self.sentence_end = sentence_end_table(source.vocab)
        self.special = source.vocab.is_special

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        part, epoch, block_id = self.source.locate(int(index))
        table = self.source.parts[part]
        block = table.table.block(block_id - table.id_offset)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_GLM_STREAM, self.seed, block_id, epoch])))
        sample = self.sample(block, rng)
        sample["block_id"] = np.int64(block_id)
        return sample

    def sample(self, block: np.ndarray, rng) -> dict[str, np.ndarray]:
        """Spans of the block's text (between its leading [CLS] and its last [SEP]), by the sample's drawn kind."""
        real = int((block != self.ids.pad).sum())
        tokens = block[:real]
        start, stop = 1, max(real - 1, 1)
        room = self.seq_length - real
        s = self.settings
        kind = rng.random()
        if stop - start < 2:
            spans, blank = [], self.ids.mask
        elif kind < s.token_prob:
            spans, blank = token_spans(start, stop, room, s, rng), self.ids.mask
        elif kind < s.token_prob + s.sentence_prob:
            spans, blank = sentence_spans(tokens, start, stop, room, self.sentence_end, s, rng), self.ids.smask
        else:
            spans, blank = document_span(start, stop, s, rng), self.ids.gmask
        order = list(rng.permutation(len(spans))) if s.shuffle_spans else list(range(len(spans)))
        return glm_layout(tokens, spans, [blank] * len(spans), order, self.ids, self.seq_length)
