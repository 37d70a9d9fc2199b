"""Fine-tuning settings, with Megatron-named flags generated from these dataclasses (``cli.py``)."""
from dataclasses import dataclass, field

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError
from megatron_vega.finetune.cloze_config import FORMATS, ClozeConfig
from megatron_vega.prompt.config import PandaConfig, PromptConfig
from megatron_vega.superglue.formats import COPA_STYLES

FINETUNE_TASKS = ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC")
SIFT_LOSSES = ("symmetric-kl", "kl", "mse")


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
    format: str = option("head", "head: a task head on the encoder; cloze: a pattern with a blank scored by the "
                                 "language-model head (docs/glm_and_cloze.md).", choices=list(FORMATS))


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
class FinetuneRun:
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sift: SiftConfig = field(default_factory=SiftConfig)
    transductive: TransductiveConfig = field(default_factory=TransductiveConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    panda: PandaConfig = field(default_factory=PandaConfig)
    cloze: ClozeConfig = field(default_factory=ClozeConfig)
    model_preset: str | None = None  # random initialisation of this preset when there is no --load

    def validate(self) -> None:
        """One-line errors for settings that cannot work (the layout is checked against the world later)."""
        t, o, tr = self.task, self.optim, self.transductive
        if not t.task:
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
