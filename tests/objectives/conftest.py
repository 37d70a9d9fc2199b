"""The embedded-corpus text and its tiny tokenizer (session fixtures of tests/data) for the COCO-LM chain test."""
from tests.data.conftest import embedded_jsonl, spm_model  # noqa: F401 (fixtures)
