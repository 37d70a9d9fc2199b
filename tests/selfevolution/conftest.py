"""The embedded-corpus text and its tiny tokenizer (session fixtures of tests/data) for the self-evolution tests."""
from tests.data.conftest import embedded_jsonl, spm_model  # noqa: F401 (fixtures)
