"""What a fine-tuned SuperGLUE model becomes in transformers: the class per task, its labels, its config fields,
and the README shipped with the heads transformers has no class for.

Imports nothing from megatron-core, so a transformers user can build a task's inputs with ``text_pairs`` alone.
"""

from megatron_vega.errors import VegaInputError
from megatron_vega.superglue.formats import build_instances
from megatron_vega.superglue.readers import label_texts, read_examples

SEQUENCE_TASKS = ("BoolQ", "CB", "MultiRC", "RTE")  # one sequence -> one row of class logits
CHOICE_TASKS = ("COPA",)  # one sequence per option -> one row of option logits
SPAN_TASKS = ("WiC", "WSC", "ReCoRD")  # heads on token spans: no transformers class
ARCHITECTURES = {**{t: "DebertaV2ForSequenceClassification" for t in SEQUENCE_TASKS},
                 **{t: "DebertaV2ForMultipleChoice" for t in CHOICE_TASKS},
                 **{t: "DebertaV2Model" for t in SPAN_TASKS}}
HEAD_FILE = "head.safetensors"


def check_known_task(task, where: str) -> str:
    if task not in ARCHITECTURES:
        raise VegaInputError(where, f"fine-tuning task {task!r} is not one this converter knows "
                                    f"({', '.join(sorted(ARCHITECTURES))})")
    return task


def task_config_fields(task: str, cls_dropout: float) -> dict:
    """config.json fields of the task model: labels, and the pooler as this framework's head computes it
    (dropout -> dense -> exact GELU on the [CLS] state, then dropout -> classifier)."""
    labels = label_texts(task)
    return {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)},
            "pooler_hidden_act": "gelu", "pooler_dropout": cls_dropout, "cls_dropout": cls_dropout,
            "superglue_task": task}


def expected_classifier_rows(task: str) -> int:
    if task in CHOICE_TASKS or task == "ReCoRD":
        return 1
    return len(label_texts(task))


def check_labels(task: str, hf_config: dict, where: str) -> None:
    """An HF config's id2label must name this task's classes in the framework's order (transformers' defaults
    LABEL_0, LABEL_1, ... say nothing and are accepted)."""
    id2label = {int(k): v for k, v in (hf_config.get("id2label") or {}).items()}
    if task in CHOICE_TASKS or not id2label or all(v == f"LABEL_{k}" for k, v in id2label.items()):
        return  # (a multiple-choice model's labels are its option positions, whatever they are called)
    want = label_texts(task)
    if [id2label.get(i) for i in range(len(id2label))] != want:
        raise VegaInputError(where, f"id2label {[id2label[i] for i in sorted(id2label)]} does not match {task}'s "
                                    f"labels {want} (in this order)")


def text_pairs(task: str, path: str, copa_style: str = "deberta") -> list[tuple]:
    """(prediction key, first text, second text or None) per unit of a SuperGLUE JSONL file, exactly as
    fine-tuning pairs them: ``tokenizer(first, second, truncation=True, max_length=seq_length)`` with the
    exported tokenizer then gives the ids the framework feeds its model. COPA: one pair per choice (in choice
    order; a question's pairs are adjacent and share its key); MultiRC: one pair per answer option."""
    return [(inst.key, inst.text_a, inst.text_b)
            for inst in build_instances(task, read_examples(task, path), copa_style=copa_style)]


def head_readme(task: str, hidden: int, labels: list[str], seq_length: int | None) -> str:
    """How to apply the span head of ``head.safetensors`` to ``DebertaV2Model`` outputs."""
    pool = ("span pooling (`pool(span)`): over the span's tokens t, weights softmax(h_t . h_CLS / sqrt(H)) of the "
            f"encoder states h (H = {hidden}), and the span vector is sum_t w_t h_t")
    if task == "ReCoRD":
        body = ("- each entity mention span m of a passage window: score(m) = classifier(gelu(pooler.dense(pool(m))))"
                " (one number; the row (0, score) is the framework's logit pair, class 1 = the mention answers);\n"
                "- input: `[CLS] passage window [SEP] query [SEP]`, the query's `@placeholder` replaced by "
                "`[MASK]`; windows of seq_length - 3 - len(query) tokens, half overlapping;\n"
                "- a candidate entity scores the best, over its mentions, of the mean over windows of "
                "log_sigmoid(score).\n")
    else:
        text = ("`[CLS] sentence1 [SEP] sentence2 [SEP]`, spans = the target word in each sentence" if task == "WiC"
                else "`[CLS] text [SEP]`, span 1 = the candidate noun phrase, span 2 = the pronoun")
        body = (f"- logits = classifier(concat(gelu(pooler.dense(h_CLS)), pool(span 1), pool(span 2))), "
                f"{len(labels)} classes;\n- input: {text}; a span covers every token overlapping its "
                f"characters (a span cut off by truncation points at [CLS]).\n")
    return (f"# {task} head for DebertaV2Model\n\n"
            f"transformers has no class for this task's head. `model.safetensors` is the encoder "
            f"(`DebertaV2Model.from_pretrained(this_dir)`); `{HEAD_FILE}` holds the head's weights "
            f"(`pooler.dense.*`, `classifier.*`) with the task and labels in its metadata.\n\n"
            f"Applied to `last_hidden_state` h (dropout is off at inference):\n\n"
            f"- {pool};\n{body}\n"
            f"Class names, in logit order: {', '.join(labels)}."
            + (f" Fine-tuned with sequences of at most {seq_length} tokens." if seq_length else "")
            + "\n\n`megatron_vega.convert.span_heads.load_span_head(this_dir)` returns the head as a torch module: "
            "`head(last_hidden_state, spans)` with `spans` rows (sequence, first token, end token exclusive).\n")
