"""Instances per task (docs/superglue_formats.md) and decoding model scores back into predictions."""
import pytest

from megatron_vega.superglue.formats import (
    Instance,
    Span,
    build_instances,
    label_index,
    label_names,
    predictions_from_scores,
    wsc_char_span,
)
from megatron_vega.superglue.readers import (
    COPAExample,
    MultiRCAnswer,
    MultiRCExample,
    MultiRCQuestion,
    PairExample,
    ReCoRDExample,
    ReCoRDQuery,
    WiCExample,
    WSCExample,
    gold_labels,
    read_examples,
)
from megatron_vega.superglue.scoring import evaluate

COPA = [COPAExample(7, "The man fell.", "He slipped.", "He sang.", "cause", 0),
        COPAExample(8, "It rained.", "The grass got wet.", "The sun shone.", "effect", None)]


def test_label_mapping():
    assert label_names("CB") == ("entailment", "contradiction", "neutral")
    assert label_names("RTE") == label_names("AX-b") == ("entailment", "not_entailment")
    assert label_names("BoolQ") == label_names("COPA") == label_names("ReCoRD") == (False, True)
    assert label_index("CB", "neutral") == 2 and label_index("WSC", True) == 1
    with pytest.raises(ValueError):
        label_index("COPA", 1)  # COPA instances are options, classed (False, True); 1 is a choice index


def test_pair_tasks_keep_segment_order():
    (inst,) = build_instances("CB", [PairExample(3, "prem", "hyp", "contradiction")])
    assert inst == Instance("CB", 3, "prem", "hyp", 1)


def test_copa_deberta_and_connective_styles():
    deberta = build_instances("COPA", COPA)
    assert [(i.text_a, i.text_b, i.label, i.group, i.option) for i in deberta] == [
        ("He slipped.", "The man fell.", 1, 7, 0),  # cause: the choice comes first
        ("He sang.", "The man fell.", 0, 7, 1),
        ("It rained.", "The grass got wet.", None, 8, 0),  # effect: the premise comes first
        ("It rained.", "The sun shone.", None, 8, 1)]
    connective = build_instances("COPA", COPA, copa_style="connective")
    assert [(i.text_a, i.text_b) for i in connective[1:3]] == [("The man fell. because", "He sang."),
                                                               ("It rained. so", "The grass got wet.")]


def test_multirc_one_instance_per_answer_grouped_by_question():
    ex = MultiRCExample(0, "Passage.", (MultiRCQuestion(4, "Who?", (MultiRCAnswer(10, "Ann", 1),
                                                                    MultiRCAnswer(11, "Bob", 0))),))
    assert build_instances("MultiRC", [ex]) == [
        Instance("MultiRC", (0, 4, 10), "Passage.", "Who? Ann", 1, group=(0, 4)),
        Instance("MultiRC", (0, 4, 11), "Passage.", "Who? Bob", 0, group=(0, 4))]


def test_record_candidates_from_inclusive_entities():
    text = "Ann met Bob. Bob left Ann."
    ex = ReCoRDExample(1, text, ((0, 2), (8, 10), (13, 15), (22, 24), (8, 10)),
                       (ReCoRDQuery(9, "@placeholder stayed.", ("Bob",)),))
    insts = build_instances("ReCoRD", [ex])
    assert [(i.option, i.label, i.spans) for i in insts] == [
        ("Ann", 0, (Span(0, 0, 3), Span(0, 22, 25))),
        ("Bob", 1, (Span(0, 8, 11), Span(0, 13, 16)))]  # duplicate entity listed once
    assert all(i.group == i.key == 9 and i.text_b == "@placeholder stayed." for i in insts)


def test_wic_and_wsc_spans():
    (wic,) = build_instances("WiC", [WiCExample(0, "bank", "A bank.", "Banks rise.", 2, 6, 0, 5, True)])
    assert wic.spans == (Span(0, 2, 6), Span(1, 0, 5)) and wic.label == 1
    text = 'The pony threw him over. "Good for him," he said.'
    (wsc,) = build_instances("WSC", [WSCExample(0, text, 0, "the pony", 7, "him", False)])
    assert [text[s.start:s.end] for s in wsc.spans] == ["The pony", "him"]  # case kept, trailing ," trimmed
    assert wsc.text_b is None and wsc.label == 0
    assert wsc_char_span("Lev Kamenev, Stalin's old", 1, "Kamenev and Zinoviev") == (4, 25)  # noisy text: tokens


def test_real_spans_select_their_words(shared_data):
    wic = read_examples("WiC", shared_data / "superglue" / "full" / "WiC" / "val.jsonl")
    for inst in build_instances("WiC", wic):
        a, b = inst.spans
        assert inst.text_a[a.start:a.end].strip() and inst.text_b[b.start:b.end].strip()
    wsc = read_examples("WSC", shared_data / "superglue" / "full" / "WSC" / "train.jsonl")
    matched = sum(inst.text_a[s.start:s.end].lower() == t.lower()
                  for ex, inst in zip(wsc, build_instances("WSC", wsc))
                  for s, t in zip(inst.spans, (ex.span1_text, ex.span2_text)))
    assert matched >= 2 * len(wsc) - 4  # all but the few records whose span text disagrees with the index
    record = read_examples("ReCoRD", shared_data / "superglue" / "dev32" / "ReCoRD" / "dev32.jsonl")
    insts = build_instances("ReCoRD", record)
    assert {i.group for i in insts if i.label == 1} == set(gold_labels("ReCoRD", record))  # gold is a candidate


def test_predictions_from_scores_per_task():
    assert predictions_from_scores("CB", build_instances("CB", [PairExample(3, "p", "h", None)]),
                                   [[0.1, 0.2, 0.7]]) == {3: "neutral"}
    copa = build_instances("COPA", COPA)
    assert predictions_from_scores("COPA", copa, [[0, 1], [0, 3], [0, 2], [1, 0]]) == {7: 1, 8: 0}
    ex = MultiRCExample(0, "P", (MultiRCQuestion(4, "Q", (MultiRCAnswer(10, "a", 1), MultiRCAnswer(11, "b", 0))),))
    multirc = build_instances("MultiRC", [ex])
    preds = predictions_from_scores("MultiRC", multirc, [[0, 1], [0, 1]])
    assert preds == {(0, 4, 10): 1, (0, 4, 11): 1}
    assert evaluate("MultiRC", [ex], preds) == {"f1a": pytest.approx(2 / 3), "em": 0.0}
    with pytest.raises(ValueError):
        predictions_from_scores("COPA", copa, [[0, 1]])


def test_record_decoding_picks_best_candidate_text():
    ex = ReCoRDExample(1, "Ann met Bob.", ((0, 2), (8, 10)), (ReCoRDQuery(9, "@placeholder.", ("Bob",)),))
    insts = build_instances("ReCoRD", [ex])
    preds = predictions_from_scores("ReCoRD", insts, [[0.0, 0.2], [0.0, 0.9]])
    assert preds == {9: "Bob"}
    assert evaluate("ReCoRD", [ex], preds) == {"f1": 1.0, "em": 1.0}
