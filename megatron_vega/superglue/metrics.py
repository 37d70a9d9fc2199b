"""The official SuperGLUE metrics (docs/superglue_formats.md), pure Python.

Every score is a fraction in [0, 1], ReCoRD included (the official ReCoRD script and the leaderboard show
x100 for every task; multiply by 100 to compare). Undefined ratios (an F1 with no predicted and no gold
positives, an MCC with a constant column) count as 0, as sklearn's defaults do.
Inputs are parallel sequences of predictions and gold labels, one entry per scored unit.
"""
import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence


def _check(preds: Sequence, golds: Sequence) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not golds:
        raise ValueError("nothing to score")


def accuracy(preds: Sequence, golds: Sequence) -> float:
    _check(preds, golds)
    return sum(p == g for p, g in zip(preds, golds)) / len(golds)


def _confusion(preds, golds, positive) -> tuple[int, int, int, int]:
    tp = sum(p == positive and g == positive for p, g in zip(preds, golds))
    fp = sum(p == positive and g != positive for p, g in zip(preds, golds))
    fn = sum(p != positive and g == positive for p, g in zip(preds, golds))
    return tp, fp, fn, len(golds) - tp - fp - fn


def binary_f1(preds: Sequence, golds: Sequence, positive) -> float:
    """F1 of the ``positive`` class: 2TP / (2TP + FP + FN)."""
    _check(preds, golds)
    tp, fp, fn, _ = _confusion(preds, golds, positive)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(preds: Sequence, golds: Sequence, classes: Sequence) -> float:
    """Mean of the per-class binary F1 over ``classes`` (CB: all 3, even one absent from the data)."""
    return sum(binary_f1(preds, golds, c) for c in classes) / len(classes)


def matthews_corrcoef(preds: Sequence, golds: Sequence, positive) -> float:
    """Binary Matthews correlation (symmetric in which class is called positive)."""
    _check(preds, golds)
    tp, fp, fn, tn = _confusion(preds, golds, positive)
    denom = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return (tp * tn - fp * fn) / denom if denom else 0.0


def multirc_f1a_em(preds: Sequence[int], golds: Sequence[int], questions: Sequence[Hashable]) -> tuple[float, float]:
    """F1a: binary F1 of class 1 over all answer options pooled; EM: fraction of questions (``questions``
    gives each option's question) whose every option is predicted correctly."""
    f1a = binary_f1(preds, golds, 1)
    all_right: dict = {}
    for p, g, q in zip(preds, golds, questions):
        all_right[q] = all_right.get(q, True) and p == g
    return f1a, sum(all_right.values()) / len(all_right)


def normalize_answer(text: str) -> str:
    """Official ReCoRD/SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(pred: str, gold: str) -> float:
    """Token F1 between normalised strings with multiset overlap; 0 without overlap."""
    pred_tokens, gold_tokens = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def record_em_f1(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> tuple[float, float]:
    """Per query the max over its gold answers of exact match / token F1, averaged over queries."""
    _check(preds, golds)
    em = sum(max(float(normalize_answer(p) == normalize_answer(g)) for g in gs) for p, gs in zip(preds, golds))
    f1 = sum(max(token_f1(p, g) for g in gs) for p, gs in zip(preds, golds))
    return em / len(golds), f1 / len(golds)


def gender_parity(preds: Sequence) -> float:
    """Fraction of minimal pairs (units 2k, 2k+1 in AX-g file order) that get the same prediction."""
    if not preds or len(preds) % 2:
        raise ValueError(f"gender parity needs an even, non-zero number of predictions, got {len(preds)}")
    pairs = len(preds) // 2
    return sum(preds[2 * k] == preds[2 * k + 1] for k in range(pairs)) / pairs
