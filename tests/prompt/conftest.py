"""Prompt-tuning tests reuse the fine-tuning fixtures (real SuperGLUE files, the botchan tokenizer, one process)."""
from tests.finetune.conftest import spm_path, superglue, world_of_one  # noqa: F401  (fixtures)
