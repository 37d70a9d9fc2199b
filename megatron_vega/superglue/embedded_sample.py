"""A small RTE-format task built from the embedded corpus, so that fine-tuning runs offline with no download.

Each record pairs a premise (one sentence of the embedded corpus, ``data/embedded_corpus.py``) with a hypothesis
of 5-12 words: a contiguous excerpt of the premise (``entailment``) or an excerpt of a sentence of another document
(``not_entailment``). Both kinds are cased and punctuated alike and the labels are balanced, so only the relation
between the two sentences tells them apart: a check of the fine-tuning pipeline that no single-sentence cue
solves. (The quickstart's tiny encoder, briefly pretrained and fine-tuned for 96 steps, stays at chance on it.)
Documents are assigned to exactly one split, so no premise or excerpt of dev or test is seen in training.

The files follow the official SuperGLUE schema (``<dir>/RTE/{train,val,test}.jsonl``; ``premise``, ``hypothesis``,
``idx``, and ``label`` except in test), so every reader and tool of the project takes them as they are. The result
depends only on the corpus, the sizes and the seed.

    python -m megatron_vega.superglue.embedded_sample --corpus corpus.jsonl --output-dir superglue
"""
import argparse
import json
import os
import random
import re
import shutil
from pathlib import Path

from megatron_vega.errors import VegaInputError, exit_on_input_error

TASK = "RTE"
SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
DEFAULT_SIZES = {"train": 512, "val": 128, "test": 128}
LABELS = ("entailment", "not_entailment")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str, min_words: int = 10, max_words: int = 40) -> list[str]:
    """The sentences of a document's paragraphs (one per line) with min_words..max_words words."""
    found = []
    for paragraph in text.splitlines():
        for sentence in _SENTENCE_END.split(paragraph.strip()):
            if min_words <= len(sentence.split()) <= max_words:
                found.append(sentence)
    return found


def _excerpt(sentence: str, rng: random.Random) -> str:
    """5-12 consecutive words (at most all but 3) of the sentence, capitalised, ending with a full stop."""
    words = sentence.split()
    length = rng.randint(5, min(12, len(words) - 3))
    start = rng.randint(0, len(words) - length)
    text = " ".join(words[start:start + length]).strip(" ,;:.!?")
    return text[:1].upper() + text[1:] + "."


def split_of(document_index: int) -> str:
    """Every 8th document goes to val, the next one to test, the rest to train."""
    return {1: "val", 2: "test"}.get(document_index % 8, "train")


def rte_sample(documents, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """{split: records}; every record has a label (the writer leaves it out of test)."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    pools: dict[str, list[tuple[int, str]]] = {split: [] for split in SPLIT_FILES}
    for i, doc in enumerate(documents):
        pools[split_of(i)].extend((i, s) for s in sentences(doc["text"]))
    sample = {}
    for split, pool in pools.items():
        n = sizes[split]
        documents_in_split = len({doc for doc, _ in pool})
        if n < 0 or len(pool) < 2 * n or documents_in_split < 2:
            raise VegaInputError("--corpus", f"too small for {n} {split} records ({len(pool)} sentences in "
                                             f"{documents_in_split} documents of that split)")
        rng = random.Random(f"{TASK}-{split}-{seed}")
        labels = [LABELS[i % 2] for i in range(n)]
        rng.shuffle(labels)
        chosen = rng.sample(range(len(pool)), n)  # distinct premises
        records = []
        for idx, (premise_at, label) in enumerate(zip(chosen, labels)):
            doc, premise = pool[premise_at]
            source = premise
            while label == "not_entailment":
                other_doc, source = pool[rng.randrange(len(pool))]
                if other_doc != doc:
                    break
            records.append({"premise": premise, "hypothesis": _excerpt(source, rng), "label": label, "idx": idx})
        sample[split] = records
    return sample


def read_documents(path: str | Path) -> list[dict]:
    """The documents of a corpus JSONL file (``{"title": ..., "text": ...}`` per line)."""
    docs = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as err:
                    raise VegaInputError(f"{path}:{number}", f"not JSON ({err.msg})") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise VegaInputError(f"{path}:{number}", 'expected an object with a "text" string')
                docs.append(doc)
    except OSError as err:
        raise VegaInputError(str(path), err.strerror or str(err)) from None
    return docs


def write_rte_sample(output_dir: str | Path, documents, sizes: dict[str, int] | None = None,
                     seed: int = 0) -> Path:
    """Write ``<output_dir>/RTE/{train,val,test}.jsonl`` (the folder appears complete or not at all)."""
    target = Path(output_dir) / TASK
    if target.exists():
        raise VegaInputError(str(target), "already exists; choose another --output-dir")
    sample = rte_sample(documents, sizes, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{TASK}.tmp-{os.getpid()}")
    try:
        temp.mkdir()
        for split, records in sample.items():
            with open(temp / SPLIT_FILES[split], "w", encoding="utf-8") as f:
                for rec in records:
                    if split == "test":
                        rec = {k: v for k, v in rec.items() if k != "label"}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=None,
                        help="Corpus JSONL written by `python -m megatron_vega.data.embedded_corpus` (default: "
                             "build the embedded corpus in memory).")
    parser.add_argument("--output-dir", required=True, help="Parent of the RTE folder to create (--data-dir of "
                                                            "finetune_superglue.py).")
    for split, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}-size", type=int, default=n, help=f"Records in {SPLIT_FILES[split]}.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with exit_on_input_error():
        if args.corpus:
            docs = read_documents(args.corpus)
        else:
            from megatron_vega.data.embedded_corpus import documents
            docs = list(documents())
        sizes = {split: getattr(args, f"{split}_size") for split in SPLIT_FILES}
        target = write_rte_sample(args.output_dir, docs, sizes, args.seed)
    print(f"wrote {target}: " + ", ".join(f"{split} {n}" for split, n in sizes.items())
          + " records (SuperGLUE RTE schema, labels balanced)")


if __name__ == "__main__":
    main()
