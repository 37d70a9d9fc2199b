"""PPT tests reuse the fine-tuning fixtures (the botchan tokenizer, one process group per module)."""
from tests.finetune.conftest import spm_path, superglue, world_of_one  # noqa: F401  (fixtures)
