"""Fine-tuning settings, with Megatron-named flags generated from these dataclasses (``cli.py``)."""
from dataclasses import dataclass, field

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError
from megatron_vega.finetune.cloze_config import ClozeConfig
from megatron_vega.prompt.config import PandaConfig, PromptConfig
from megatron_vega.superglue.formats import COPA_STYLES
from megatron_vega.unimc.config import UniMCConfig, check_unimc_run

FINETUNE_TASKS = ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC")
SIFT_LOSSES = ("symmetric-kl", "kl", "mse")
PDR_DIVERGENCES = ("js", "hellinger", "symmetric-kl")

# --format: a task head on [CLS]/spans, UniMC multiple choice on the MLM head, or the LM head at a cloze blank
FORMATS = ("head", "unimc", "cloze")


@dataclass
class TaskConfig:
    """What to fine-tune on, from which weights, and where results go."""
    task: str = option("", "SuperGLUE task (AX-b and AX-g are predicted with the RTE model).",
                       choices=list(FINETUNE_TASKS))
    data_dir: str | None = option(None, "Parent of the task folders: <dir>/<Task>/{train,val,test}.jsonl "
                                        "(and <dir>/AX-b/AX-b.jsonl, <dir>/AX-g/AX-g.jsonl for RTE).")
    train_file: str | None = option(None, "Training file (overrides <data-dir>/<Task>/train.jsonl).")
    dev_file: str | None = option(None, "Dev file for evaluation and model selection (default val.jsonl).")
    test_file: str | None = option(None, "Unlabelled file to predict and to pseudo-label (default test.jsonl).")
    max_train_examples: int | None = option(None, "Use only the first N training records (MultiRC/ReCoRD: passages).")
    max_eval_examples: int | None = option(None, "Use only the first N records of dev, test and AX files.")
    tokenizer_model: str | None = option(None, "sentencepiece .model (default: the one the checkpoint was trained "
                                               "with).", flag="--tokenizer-model")
    load: str | None = option(None, "Checkpoint directory: a pretraining checkpoint (encoder weights) or a "
                                    "fine-tuned one (encoder, and the head when it is for the same task).")
    save: str | None = option(None, "Save the best-dev model (encoder + head) here.")
    predict: str | None = option(None, "Write the leaderboard file(s) for the test split into this directory.")
    overwrite: bool = option(False, "Replace existing prediction files and a --save directory holding a run.")
    copa_style: str = option("deberta", "COPA pair layout (superglue.formats).", choices=list(COPA_STYLES))
    format: str = option("head", "head: a task head on the encoder; unimc: UniMC multiple choice on the MLM head "
                                 "(docs/unimc_and_ppt.md; --load needs an MLM head); cloze: a pattern with a blank "
                                 "scored by the language-model head (docs/glm_and_cloze.md).", choices=list(FORMATS))


@dataclass
class OptimConfig:
    """Schedule, optimiser, precision and layout of the fine-tuning run."""
    epochs: int = option(3, "Passes over the training set (0: only evaluate and predict with --load).")
    micro_batch_size: int = option(8, "Training units per micro-batch per data-parallel rank (COPA: questions, "
                                      "ReCoRD: windows).")
    global_batch_size: int | None = option(None, "Units per optimizer step (default micro-batch x DP).")
    seq_length: int = option(512, "Longest input sequence, [CLS] and [SEP]s included.", flag="--seq-length")
    lr: float = option(1e-5, "Peak learning rate.")
    min_lr: float = option(0.0, "Learning rate at the end of the linear decay.")
    lr_warmup_fraction: float = option(0.1, "Linear warm-up over this fraction of the steps.")
    weight_decay: float = option(0.01, "Decoupled weight decay (not on biases and LayerNorms).")
    clip_grad: float = option(1.0, "Global gradient-norm clipping (0: off).")
    adam_beta1: float = option(0.9, "Adam beta1.")
    adam_beta2: float = option(0.999, "Adam beta2.")
    adam_eps: float = option(1e-6, "Adam epsilon.")
    hidden_dropout: float | None = option(None, "Encoder hidden dropout (default: the checkpoint's).")
    attention_dropout: float | None = option(None, "Encoder attention dropout (default: the checkpoint's).")
    cls_dropout: float = option(0.1, "Dropout in the task head.")
    bf16: bool = option(False, "bf16 weights and activations (fp32 main weights and optimizer state).")
    seed: int = option(1234, "Seed for the head, dropout, SiFT noise and data order.")
    tensor_model_parallel_size: int = option(1, "Tensor-parallel size.")
    pipeline_model_parallel_size: int = option(1, "Must be 1: fine-tuning runs without pipeline parallelism.")
    log_interval: int = option(10, "Print the training loss every N steps.")

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"


@dataclass
class SiftConfig:
    """SiFT (docs/sift.md): adversarial noise on the normalized word embeddings."""
    sift: bool = option(False, "Scale-invariant fine-tuning.")
    sift_lambda: float = option(5.0, "Weight of the adversarial loss (DeBERTa's vat_lambda).")
    sift_init_perturbation: float = option(1e-2, "Std of the initial noise, clamped to +-2 std.")
    sift_step_size: float = option(1e-4, "Step of the ascent on the noise (DeBERTa's vat_learning_rate).")
    sift_loss: str = option("symmetric-kl", "Loss of the ascent step (the adversarial loss itself is symmetric "
                                            "KL, as in DeBERTa's sift.py).", choices=list(SIFT_LOSSES))


@dataclass
class TransductiveConfig:
    """Transductive fine-tuning (docs/transductive_finetuning.md): retrain on train + pseudo-labelled test."""
    transductive_rounds: int = option(0, "Rounds of pseudo-labelling the test split and retraining.")
    transductive_threshold: float = option(0.0, "Keep pseudo-labels with confidence >= this (0: keep all).")
    transductive_min_flip_rate: float = option(0.005, "Stop when fewer test predictions than this fraction "
                                                      "change between rounds.")


@dataclass
class PdrConfig:
    """PDR (docs/pdr_and_multitask.md): a divergence between the posteriors on clean and noisy word embeddings."""
    pdr: bool = option(False, "Posterior differential regularization.")
    pdr_divergence: str = option("js", "Divergence between the clean and noisy posteriors.",
                                 choices=list(PDR_DIVERGENCES))
    pdr_noise: float = option(1e-5, "Std of the Gaussian noise on the word embeddings, relative to each token's "
                                    "embedding RMS (MT-DNN's adv_noise_var).")
    pdr_alpha: float = option(1.0, "Weight of the PDR term (MT-DNN's adv_alpha).")


@dataclass
class MultitaskConfig:
    """MT-DNN multi-task fine-tuning (docs/pdr_and_multitask.md): one encoder, one head per task."""
    multitask: str = option("", "Comma-separated tasks trained together (e.g. CB,RTE,COPA), each from "
                                "<data-dir>/<Task>/; replaces --task.")
    multitask_temperature: float = option(1.0, "Task sampling: P(task) proportional to its batches^(1/T); T=1 is "
                                               "MT-DNN's shuffled list (every batch once per epoch).")

    @property
    def tasks(self) -> list[str]:
        """The task list, checked: every name known, none twice."""
        names = [name.strip() for name in self.multitask.split(",")] if self.multitask else []
        for i, name in enumerate(names):
            if name not in FINETUNE_TASKS:
                raise VegaInputError("--multitask", f"unknown task '{name}' (one of {', '.join(FINETUNE_TASKS)})")
            if name in names[:i]:
                raise VegaInputError("--multitask", f"{name} is listed twice")
        return names


@dataclass
class FinetuneRun:
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sift: SiftConfig = field(default_factory=SiftConfig)
    transductive: TransductiveConfig = field(default_factory=TransductiveConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    panda: PandaConfig = field(default_factory=PandaConfig)
    pdr: PdrConfig = field(default_factory=PdrConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)
    unimc: UniMCConfig = field(default_factory=UniMCConfig)
    cloze: ClozeConfig = field(default_factory=ClozeConfig)
    model_preset: str | None = None  # random initialisation of this preset when there is no --load

    def validate(self) -> None:
        """One-line errors for settings that cannot work (the layout is checked against the world later)."""
        t, o, tr = self.task, self.optim, self.transductive
        if self.multitask.multitask:
            self._validate_multitask()
        elif not t.task:
            raise VegaInputError("--task", f"required (one of {', '.join(FINETUNE_TASKS)})")
        if o.pipeline_model_parallel_size != 1:
            raise VegaInputError("--pipeline-model-parallel-size", "fine-tuning does not support pipeline "
                                                                   "parallelism; use TP and DP")
        if not t.load and not self.model_preset:
            raise VegaInputError("--load", "required (or --model-preset NAME to start from random weights)")
        if not t.data_dir and not (t.train_file and t.dev_file) and o.epochs > 0:
            raise VegaInputError("--data-dir", "required unless --train-file and --dev-file are given")
        if o.seq_length < 8:
            raise VegaInputError("--seq-length", f"must be at least 8, got {o.seq_length}")
        if o.epochs < 0 or o.micro_batch_size < 1:
            raise VegaInputError("--epochs", "--epochs must be >= 0 and --micro-batch-size >= 1")
        if not 0.0 <= o.lr_warmup_fraction < 1.0:
            raise VegaInputError("--lr-warmup-fraction", f"must be in [0, 1), got {o.lr_warmup_fraction}")
        if tr.transductive_rounds < 0 or not 0.0 <= tr.transductive_threshold <= 1.0:
            raise VegaInputError("--transductive-rounds", "rounds must be >= 0 and the threshold in [0, 1]")
        if tr.transductive_rounds and o.epochs == 0:
            raise VegaInputError("--transductive-rounds", "needs training (--epochs > 0)")
        self.prompt.validate()
        self.panda.validate(self.prompt)
        if self.prompt.prompt_tuning and self.sift.sift:
            raise VegaInputError("--sift", "not with --prompt-tuning (SiFT perturbs the word embeddings of a "
                                           "model that trains them)")
        if self.prompt.prompt_tuning and t.save:
            raise VegaInputError("--save", "with --prompt-tuning the backbone is frozen: save the prompt and head "
                                           "with --save-prompt FILE")
        if t.format == "unimc":
            check_unimc_run(self)
        if self.pdr.pdr and t.format != "head":
            raise VegaInputError("--pdr", f"regularises the task heads' posteriors (--format head), not --format "
                                          f"{t.format}")
        if self.pdr.pdr and (self.prompt.prompt_tuning or self.pdr.pdr_noise <= 0 or self.pdr.pdr_alpha < 0):
            raise VegaInputError("--pdr", "needs --pdr-noise > 0 and --pdr-alpha >= 0, and not --prompt-tuning "
                                          "(the prompt owns the embedding hook)")
        # bf16 keeps 8 significant bits: noise far below 2^-8 of the embedding scale rounds away, and the noisy
        # posteriors equal the clean ones (a PDR term of exactly 0 at the default 1e-5).
        if self.pdr.pdr and self.optim.bf16 and self.pdr.pdr_noise < 2 ** -8:
            raise VegaInputError("--pdr-noise", f"{self.pdr.pdr_noise:g} rounds away in bf16 (8 significant bits): "
                                                f"give --pdr-noise >= {2 ** -8:.4g} with --bf16, or train in fp32")

    def _validate_multitask(self) -> None:
        t, m = self.task, self.multitask
        if len(m.tasks) < 2:
            raise VegaInputError("--multitask", f"needs at least two tasks, got '{m.multitask}'")
        if t.task:
            raise VegaInputError("--task", "not with --multitask (it names the tasks)")
        if t.train_file or t.dev_file or t.test_file or not t.data_dir:
            raise VegaInputError("--data-dir", "with --multitask every task reads <data-dir>/<Task>/ "
                                               "(no --train-file, --dev-file or --test-file)")
        if m.multitask_temperature <= 0:
            raise VegaInputError("--multitask-temperature", f"must be > 0, got {m.multitask_temperature}")
        if self.transductive.transductive_rounds or self.prompt.prompt_tuning:
            raise VegaInputError("--multitask", "not with --transductive-rounds or --prompt-tuning")
        if t.format != "head":
            raise VegaInputError("--multitask", f"trains task heads (--format head), not --format {t.format}")
