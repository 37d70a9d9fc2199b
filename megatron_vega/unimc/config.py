"""UniMC settings (docs/unimc_and_ppt.md), Megatron-style flags generated from this dataclass."""
from dataclasses import dataclass

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError

MASKS = ("reference", "isolated")


@dataclass
class UniMCConfig:
    """--format unimc: the task's choices scored by the MLM head's "yes" logit at each option's O-MASK."""
    unimc_yes: str = option("yes", "Word whose logit at an O-MASK scores the option; must be one tokenizer piece.")
    unimc_no: str = option("no", "O-MLM target at the O-MASKs of wrong options; must be one tokenizer piece.")
    unimc_mask: str = option("reference", "reference: UniMC's mask (question and passage see every option, options "
                                          "see only themselves and the shared text); isolated: the shared text does "
                                          "not see the options either, so no option can change another's score.",
                             choices=list(MASKS))
    unimc_text_mlm: bool = option(True, "Auxiliary MLM on the text after the options while training (per-example "
                                        "rate from {0, .1, .2, .3}).")
    unimc_extra_tasks: list[str] = option([], "More tasks whose training splits (<data-dir>/<Task>/train.jsonl) are "
                                              "mixed into training: UniMC's multi-task training.")

    def validate(self) -> None:
        from megatron_vega.unimc.tasks import CHOICE_TASKS
        for task in self.unimc_extra_tasks:
            if task not in CHOICE_TASKS:
                raise VegaInputError("--unimc-extra-tasks", f"{task} is not a choice task ({', '.join(CHOICE_TASKS)})")
