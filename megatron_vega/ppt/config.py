"""``tools/pretrain_prompt.py`` settings (docs/unimc_and_ppt.md, "PPT"): Megatron-style flags generated from this
dataclass. The prompt fields carry the names of ``prompt.config.PromptConfig``'s, so ``prompt.store`` builds and
saves the prompt from either."""
import argparse
from dataclasses import dataclass
from pathlib import Path

from megatron_vega.cli import add_dataclass_flags, apply_flags, option
from megatron_vega.config import PRESETS
from megatron_vega.errors import VegaInputError
from megatron_vega.ppt.data import TASKS
from megatron_vega.ppt.model import LOSSES
from megatron_vega.prompt.config import PROMPT_ENCODERS, PROMPT_INITS, PROMPT_TYPES


@dataclass
class PretrainPromptConfig:
    # backbone
    load: str | None = option(None, "Backbone checkpoint with its MLM head (pretrain_vega.py); frozen.")
    model_preset: str | None = option(None, "A random backbone of this preset instead of --load (smoke runs).",
                                      choices=list(PRESETS))
    tokenizer_model: str | None = option(None, "sentencepiece .model (default: the checkpoint's).")
    hidden_dropout: float | None = option(None, "Backbone hidden dropout while training (default: the checkpoint's).")
    attention_dropout: float | None = option(None, "Backbone attention dropout (default: the checkpoint's).")
    # data
    ppt_task: str = option("nsp3", "nsp3: 3-class next sentence (no / maybe / yes); nss: next-sentence selection "
                                   "among --ppt-options lettered options; unified: nss with 2-16 options per "
                                   "document; single: pseudo-labelled single texts (--text JSONL with text, label, "
                                   "prob).", choices=list(TASKS))
    data_path: str | None = option(None, "Indexed corpus prefix (tools/preprocess_data.py); sentences end at pieces "
                                         "ending in . ! or ?.")
    text: str | None = option(None, "Plain text (a document per paragraph) or JSONL (a document per line) instead "
                                    "of --data-path; the pseudo-labelled JSONL for --ppt-task single.")
    json_keys: list[str] = option(["text"], "JSONL keys whose values make a document.")
    ppt_label_words: list[str] = option([], "Label words in class order (default: no maybe yes for nsp3, terrible "
                                            "bad maybe good great for single, the letters A-Q for nss/unified); "
                                            "each must be one tokenizer piece.")
    ppt_options: int = option(6, "Options per nss example (1 adjacent, 1 same-document, the rest from other "
                                 "documents).")
    ppt_min_sentences: int = option(5, "Documents need this many usable sentences.")
    ppt_min_sentence_tokens: int = option(5, "Sentences shorter than this many tokens are dropped.")
    ppt_single_thresholds: list[float] = option([0.95, 0.5, 0.5, 0.5, 0.7], "single: keep a record when its prob "
                                                                            "exceeds its label's threshold.")
    ppt_dev_fraction: float = option(0.1, "Documents (records for single) held out for the pseudo-labelled dev set.")
    ppt_max_dev_examples: int = option(1000, "Evaluate on at most this many dev examples.")
    ppt_loss: str = option("vocab", "vocab: cross-entropy over the whole vocabulary at the slot (PPT); verbalizer: "
                                    "over the label words only (PET).", choices=list(LOSSES))
    # prompt
    prompt_type: str = option("shallow", "shallow: vectors after [CLS] (PPT's encoder-side prompt); deep: per-layer "
                                         "prefix keys/values.", choices=list(PROMPT_TYPES))
    prompt_length: int = option(100, "Number of prompt vectors (PPT: 100).")
    prompt_init: str = option("vocab", "random: N(0, 1); vocab: embeddings of frequent tokens; text: of "
                                       "--prompt-init-text.", choices=list(PROMPT_INITS))
    prompt_init_text: str | None = option(None, "Text whose tokens initialise the prompt (--prompt-init text).")
    prompt_encoder: str = option("none", "Prompt reparameterisation (none, mlp, lstm).", choices=list(PROMPT_ENCODERS))
    prompt_hidden_size: int = option(512, "Hidden size of the mlp prompt encoder.")
    prompt_dropout: float = option(0.1, "Dropout on deep-prompt keys/values.")
    # training
    seq_length: int = option(256, "Longest example, prompt included.")
    micro_batch_size: int = option(8, "Examples per forward on one data-parallel rank.")
    global_batch_size: int | None = option(None, "Examples per step (default micro-batch x DP).")
    lr: float = option(1e-2, "Adam learning rate of the prompt (constant).")
    weight_decay: float = option(0.01, "AdamW weight decay (PPT: 0.01).")
    clip_grad: float = option(1.0, "Gradient-norm clip (PPT: 1.0; 0 turns it off).")
    train_iters: int = option(1000, "Optimizer steps.")
    eval_interval: int = option(100, "Evaluate on dev every N steps (and at the end); the best-dev prompt is saved.")
    log_interval: int = option(10, "Print the training loss every N steps.")
    seed: int = option(1234, "Seed of the data, the prompt init, the order and dropout.")
    tensor_model_parallel_size: int = option(1, "Tensor-parallel size.")
    save: str | None = option(None, "Prompt file to write (prompt/store.py's format, empty head): "
                                    "finetune_superglue.py --init-prompt and the PANDA tools read it.")
    overwrite: bool = option(False, "Replace an existing --save file.")
    dry_run: bool = option(False, "Check the flags and the layout against WORLD_SIZE, read nothing.")

    def validate(self) -> None:
        if bool(self.load) == bool(self.model_preset):
            raise VegaInputError("--load", "give exactly one of --load CKPT or --model-preset NAME")
        if bool(self.data_path) == bool(self.text):
            raise VegaInputError("--data-path", "give exactly one of --data-path PREFIX or --text FILE")
        if self.ppt_task == "single" and not self.text:
            raise VegaInputError("--ppt-task", "single reads pseudo-labelled JSONL: give --text FILE")
        if not self.save and not self.dry_run:
            raise VegaInputError("--save", "required: the prompt file to write")
        if self.ppt_min_sentences < 4:
            raise VegaInputError("--ppt-min-sentences", "must be >= 4 (a same-document non-adjacent sentence)")
        if not 2 <= self.ppt_options <= 17:
            raise VegaInputError("--ppt-options", f"must be in [2, 17], got {self.ppt_options}")
        if not 0 < self.ppt_dev_fraction < 1:
            raise VegaInputError("--ppt-dev-fraction", f"must be in (0, 1), got {self.ppt_dev_fraction}")
        for name in ("prompt_length", "micro_batch_size", "train_iters", "eval_interval", "log_interval",
                     "tensor_model_parallel_size"):
            if getattr(self, name) < 1:
                raise VegaInputError("--" + name.replace("_", "-"), f"must be >= 1, got {getattr(self, name)}")
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise VegaInputError("--prompt-init", "text needs --prompt-init-text")


def parse_args(argv, description: str = "") -> PretrainPromptConfig:
    """The checked configuration of ``argv``; an existing --save file is refused before anything is read."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(parser, PretrainPromptConfig, title="PPT prompt pre-training")
    cfg = apply_flags(PretrainPromptConfig(), parser.parse_args(argv))
    cfg.validate()
    if cfg.save and Path(cfg.save).exists() and not cfg.overwrite and not cfg.dry_run:
        raise VegaInputError(cfg.save, "exists; pass --overwrite to replace it")
    return cfg
