"""Pretraining objectives as plug-ins (objectives/base.py): importing the package registers the built-in ones."""
from megatron_vega.objectives import coco_lm, glm, mlm, self_evolution  # noqa: F401  (registration)
