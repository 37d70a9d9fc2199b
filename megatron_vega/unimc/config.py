"""UniMC settings (docs/unimc_and_ppt.md), Megatron-style flags generated from this dataclass."""
from dataclasses import dataclass
from pathlib import Path

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError

MASKS = ("reference", "isolated")
GENERIC = "MC"  # generic multiple-choice JSONL: {"question", "passage", "options", "label"} per line
CHOICE_TASKS = ("BoolQ", "CB", "COPA", "MultiRC", "RTE", "WiC", "WSC", "AX-b", "AX-g", GENERIC)


@dataclass
class UniMCConfig:
    """--format unimc: the task's choices scored by the MLM head's "yes" logit at each option's O-MASK."""
    unimc_yes: str = option("yes", "Word whose logit at an O-MASK scores the option; must be one tokenizer piece.")
    unimc_no: str = option("no", "O-MLM target at the O-MASKs of wrong options; must be one tokenizer piece.")
    unimc_mask: str = option("isolated", "isolated: options see [CLS], themselves and the shared text, which sees no "
                                         "option, so no option can change another's score; reference: UniMC's own "
                                         "mask (question and passage see every option, so with 2+ layers options "
                                         "reach each other through them).", choices=list(MASKS))
    unimc_text_mlm: bool = option(True, "Auxiliary MLM on the text after the options while training (per-example "
                                        "rate from {0, .1, .2, .3}).")
    unimc_extra_tasks: list[str] = option([], "More tasks whose training splits (<data-dir>/<Task>/train.jsonl) are "
                                              "mixed into training: UniMC's multi-task training.")

    def validate(self) -> None:
        for task in self.unimc_extra_tasks:
            if task not in CHOICE_TASKS:
                raise VegaInputError("--unimc-extra-tasks", f"{task} is not a choice task ({', '.join(CHOICE_TASKS)})")


def check_unimc_run(run) -> None:
    """--format unimc: the refused combinations (a FinetuneRun's SiFT, prompt tuning, transductive rounds) and the
    UniMC flags."""
    if run.task.task not in CHOICE_TASKS:
        raise VegaInputError("--task", f"{run.task.task} is not a choice task ({', '.join(CHOICE_TASKS)})")
    used = [flag for flag, on in (("--sift", run.sift.sift), ("--prompt-tuning", run.prompt.prompt_tuning),
                                  ("--transductive-rounds", run.transductive.transductive_rounds)) if on]
    if used:
        raise VegaInputError(used[0], "not with --format unimc")
    run.unimc.validate()


def describe(u: UniMCConfig, extra_tasks: bool = True) -> str:
    """One line of the UniMC settings, for --dry-run and the logs."""
    return (f"UniMC (yes {u.unimc_yes!r}, no {u.unimc_no!r}, mask {u.unimc_mask}"
            + (f", text MLM {'on' if u.unimc_text_mlm else 'off'}" if extra_tasks else "")
            + (f", with {' '.join(u.unimc_extra_tasks)}" if extra_tasks and u.unimc_extra_tasks else "") + ")")


def split_path(task: str, data_dir: str | None, split: str) -> str:
    """<dir>/<Task>/<split>.jsonl (AX-b / AX-g: <dir>/<AX>/<AX>.jsonl)."""
    if not data_dir:
        raise VegaInputError("--data-dir", "required (or --data-file)")
    name = f"{task}.jsonl" if task.startswith("AX-") else f"{split}.jsonl"
    return str(Path(data_dir) / task / name)


def prediction_path(task: str, directory) -> Path:
    """Where zero-shot writes ``task``'s predictions: the leaderboard file name, or ``MC.jsonl`` for generic MC."""
    from megatron_vega.superglue.submission import submission_name
    return Path(directory) / (f"{GENERIC}.jsonl" if task == GENERIC else submission_name(task))
