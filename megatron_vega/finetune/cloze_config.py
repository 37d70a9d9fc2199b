"""The flags of ``finetune_superglue.py --format cloze`` (docs/glm_and_cloze.md); the code is finetune/cloze.py."""
from dataclasses import dataclass

from megatron_vega.cli import option

CLOZE_STYLES = ("auto", "glm", "pet")


@dataclass
class ClozeConfig:
    """--format cloze: patterns, answer scoring and P-tuning's continuous prompt (docs/glm_and_cloze.md)."""
    cloze_style: str = option("auto", "glm: read the blank as GLM's first infilling step ([sop]); pet: read the "
                                      "logits at [MASK]; auto: glm for a GLM-pretrained checkpoint, else pet.",
                              choices=list(CLOZE_STYLES))
    cloze_prompt_length: int = option(2, "Continuous prompt vectors per [P] slot of the pattern (with "
                                         "--prompt-encoder lstm|mlp).")
    cloze_prompt_lr: float = option(1e-4, "Learning rate of the prompt encoder (P-tuning's second group; the "
                                          "backbone uses --lr).")
