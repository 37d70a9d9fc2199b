"""Blank filling with a GLM-pretrained encoder (docs/glm_and_cloze.md): the text with its blanks is Part A; each
blank is generated left to right in Part B ([sop], then one token per step until [eop]), the blanks in the
text's order, each seeing the text and the blanks already filled. One full forward per generated token (no
key/value cache): meant for inspection, not throughput."""
import re

import torch

from megatron_vega.data.glm_blanks import GLMSpecialIds
from megatron_vega.model.attention_inputs import AttentionInputs

BLANK = re.compile(r"\[(MASK|sMASK|gMASK)\]")


def encode_with_blanks(tokenizer, text: str, ids: GLMSpecialIds) -> tuple[list[int], list[int]]:
    """[CLS] text [SEP] with each [MASK] / [sMASK] / [gMASK] as its blank id (the tokenizer need not know the
    literal); returns (ids, the blanks' positions)."""
    blank_ids = {"MASK": ids.mask, "sMASK": ids.smask, "gMASK": ids.gmask}
    tokens, blanks, cursor = [tokenizer.cls_id], [], 0
    for match in BLANK.finditer(text):
        tokens += tokenizer.encode(text[cursor:match.start()].strip())
        blanks.append(len(tokens))
        tokens.append(blank_ids[match[1]])
        cursor = match.end()
    tokens += tokenizer.encode(text[cursor:].strip()) + [tokenizer.sep_id]
    return tokens, blanks


@torch.no_grad()
def next_token_logits(model, tokens: list[int], pos1: list[int], pos2: list[int], prefix: int, device) -> torch.Tensor:
    """The logits [V] at the last position of one GLM sequence (tensor-parallel size 1)."""
    as_row = lambda values: torch.tensor([values], dtype=torch.long, device=device)  # noqa: E731
    attention = AttentionInputs(as_row([1] * len(tokens)), prefix_lengths=torch.tensor([prefix], device=device),
                                position_ids=as_row(pos1), block_position_ids=as_row(pos2))
    last = torch.tensor([len(tokens) - 1], device=device)
    return model(as_row(tokens), attention, lm_positions=last)[0].float()


def fill_blanks(model, part_a: list[int], blanks: list[int], ids: GLMSpecialIds, banned: list[int],
                max_tokens: int = 20, temperature: float = 0.0, generator: torch.Generator | None = None,
                device="cpu") -> list[list[int]]:
    """Each blank's generated ids. temperature 0: greedy; else sampling from softmax(logits / temperature).
    ``banned``: ids never generated (specials other than [eop])."""
    tokens, pos1, pos2 = list(part_a), list(range(len(part_a))), [0] * len(part_a)
    fills = []
    for blank in blanks:
        tokens, pos1, pos2 = tokens + [ids.sop], pos1 + [blank], pos2 + [1]
        span: list[int] = []
        for _ in range(max_tokens):
            logits = next_token_logits(model, tokens, pos1, pos2, len(part_a), device)
            logits[banned] = float("-inf")
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(logits.argmax())
            if token == ids.eop:
                break
            span.append(token)
            tokens, pos1, pos2 = tokens + [token], pos1 + [blank], pos2 + [len(span) + 1]
        fills.append(span)
    return fills


def filled_text(tokenizer, part_a: list[int], blanks: list[int], fills: list[list[int]],
                marks: tuple[str, str] = ("[", "]")) -> str:
    """Part A decoded with each blank replaced by its fill (between ``marks``)."""
    pieces, cursor = [], 1  # skip [CLS]
    for blank, fill in zip(blanks, fills):
        pieces.append(tokenizer.decode(part_a[cursor:blank]))
        pieces.append(marks[0] + tokenizer.decode(fill) + marks[1])
        cursor = blank + 1
    pieces.append(tokenizer.decode(part_a[cursor:-1]))
    return " ".join(p for p in pieces if p)
