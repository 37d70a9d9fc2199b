"""One typed configuration: model shape, parallel layout, optimisation, checkpoints, logging.

Named size presets live here; Megatron-named CLI flags are generated from these dataclasses (``cli.py``).
"""
import os
from dataclasses import dataclass

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError

# The names of ops/attention's registry (a test keeps them equal), listed here so that the config stays torch-free.
ATTENTION_BACKENDS = ("auto", "sdpa", "cpu", "triton")


@dataclass
class ModelConfig:
    """A DeBERTa-v2-style encoder (post-LN, disentangled attention). Defaults are the `vega-6b` shape.

    With ``--load`` of a checkpoint these come from the checkpoint; explicit flags must agree with it, except the
    run settings in ``LOAD_OVERRIDABLE`` (``training/checkpoint_args.py``)."""
    num_layers: int = option(24, "Number of transformer layers.")
    hidden_size: int = option(4096, "Hidden size.")
    num_attention_heads: int = option(32, "Attention heads.")
    kv_channels: int | None = option(None, "Head dimension (default hidden/heads).")
    ffn_hidden_size: int | None = option(None, "FFN inner size (default 4*hidden).")
    vocab_size: int = option(128100, "Vocabulary size before padding (default: the --tokenizer-model's size, "
                                     "else the preset's).")
    make_vocab_size_divisible_by: int = option(
        128, "Pad the vocabulary to a multiple of this. Padding does not depend on TP, so checkpoints reshard; "
             "the padded size must divide by the tensor-parallel size.")
    max_position_embeddings: int = option(512, "Longest sequence; also the log-bucket range when "
                                               "max_relative_positions < 1.")
    position_buckets: int = option(256, "Relative-position log buckets k' (0: no bucketing).")
    max_relative_positions: int = option(-1, "Largest relative distance (-1: max_position_embeddings).")
    share_att_key: bool = option(True, "Position keys/queries reuse the content Q/K projections.")
    pos_att_type: str = option("p2c|c2p", "Disentangled terms besides c2c.", choices=["p2c|c2p", "c2p|p2c", "c2p",
                                                                                    "p2c", "none"])
    norm_rel_ebd: bool = option(True, "LayerNorm on the relative embedding table (norm_rel_ebd=layer_norm).")
    conv_kernel_size: int = option(3, "nGiE convolution after layer 0 (0: none).")
    conv_act: str = option("gelu", "Activation of the nGiE convolution.", choices=["gelu", "tanh", "relu"])
    layernorm_epsilon: float = option(1e-7, "LayerNorm epsilon.")
    hidden_dropout: float = option(0.1, "Dropout on hidden states (may differ from a loaded checkpoint's).")
    attention_dropout: float = option(0.1, "Dropout on attention probabilities (may differ from a loaded "
                                           "checkpoint's).")
    init_method_std: float = option(0.02, "Std of the normal weight initialisation (may differ from a loaded "
                                          "checkpoint's).")
    pad_token_id: int = option(0, "Padding token id (HF pad_token_id).")
    block_position_embeddings: int = option(0, "Rows of GLM's intra-span position table, added to the word "
                                               "embeddings (0: none; --objective glm sets it; docs/glm_and_cloze.md).")
    block_positions_relative: bool = option(False, "GLM's position 2 as the relative position inside a span (two "
                                                   "tokens of one Part-B span: pos2_i - pos2_j; --objective glm "
                                                   "--glm-block-positions relative sets it; docs/glm_and_cloze.md).")
    # A run setting: which kernel computes attention, not what the weights compute. Checked here (not by argparse
    # choices) so that a wrong name is a one-line error like a core that cannot run this device.
    attention_backend: str = option("auto", "Attention core, chosen once when the model is built: auto (the fastest "
                                            "that runs this device and dtype), sdpa (torch SDPA, any device) or cpu "
                                            "(the hand-written CPU core). See docs/attention.md.")

    def __post_init__(self):
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise VegaInputError("--attention-backend", f"unknown core {self.attention_backend!r}; choose from "
                                                        f"{', '.join(ATTENTION_BACKENDS)}")
        if self.kv_channels is None:
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size

    @property
    def padded_vocab_size(self) -> int:
        m = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // m) * m

    @property
    def pos_terms(self) -> tuple[bool, bool]:
        """(c2p, p2c) enabled."""
        return "c2p" in self.pos_att_type, "p2c" in self.pos_att_type

    @property
    def attention_span(self) -> int:
        """k': half the number of relative-embedding rows."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative

    @property
    def max_relative(self) -> int:
        return self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings


# Model fields that are run settings, not the model itself: an explicit flag may replace a loaded checkpoint's value.
# Every other field changes a tensor's shape or the function the weights compute, so it must agree.
LOAD_OVERRIDABLE = frozenset({"hidden_dropout", "attention_dropout", "init_method_std", "attention_backend"})
# Run settings a loaded checkpoint does not pass on: the kernel a run used says nothing about the next run's machine.
NOT_INHERITED = frozenset({"attention_backend"})


def inherited(saved: dict) -> dict:
    """A saved model config without the settings the run that loads it chooses for itself (NOT_INHERITED)."""
    return {k: v for k, v in saved.items() if k not in NOT_INHERITED}

PRESETS: dict[str, dict] = {
    # Small enough for multi-process CPU tests; buckets < typical test lengths so log buckets are exercised.
    "tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256, vocab_size=1000,
                 make_vocab_size_divisible_by=8, max_position_embeddings=512, position_buckets=32),
    "base": dict(num_layers=12, hidden_size=768, num_attention_heads=12, ffn_hidden_size=3072, vocab_size=128100),
    "large": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, ffn_hidden_size=4096,
                  vocab_size=128100),
    "vega-6b": dict(num_layers=24, hidden_size=4096, num_attention_heads=32, kv_channels=128,
                    ffn_hidden_size=16384, vocab_size=128100),
}


def world_size() -> int:
    """The world torchrun or Slurm describe (WORLD_SIZE, else SLURM_NTASKS), 1 for a plain process."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))


def model_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise VegaInputError("--model-preset", f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return ModelConfig(**{**PRESETS[name], **overrides})


@dataclass
class ParallelConfig:
    """How the model is laid out on the world: TP x PP x DP (DP = world / (TP*PP))."""
    tensor_model_parallel_size: int = option(1, "Tensor-parallel size (heads, FFN and vocabulary are split).")
    pipeline_model_parallel_size: int = option(1, "Pipeline-parallel stages.")
    num_layers_per_virtual_pipeline_stage: int | None = option(
        None, "Layers per virtual stage (interleaved 1F1B schedule).")
    sequence_parallel: bool = option(False, "Split LayerNorm/dropout activations along the sequence across TP.")
    recompute_activations: bool = option(False, "Selective recomputation: the attention core is recomputed "
                                                "in the backward pass instead of stored.")
    recompute_granularity: str | None = option(None, "'full' recomputes whole layers; 'selective' = "
                                                     "--recompute-activations.", choices=["full", "selective"])
    use_distributed_optimizer: bool = option(False, "Shard optimizer state across data-parallel ranks (ZeRO-1).")
    overlap_grad_reduce: bool = option(False, "Overlap the data-parallel gradient reduce with the backward.")

    def validate(self, model: ModelConfig, world_size: int) -> int:
        """Check the layout against the world and the model; return the data-parallel size."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if tp < 1 or pp < 1:
            raise VegaInputError("--tensor-model-parallel-size", "TP and PP sizes must be >= 1")
        if model.num_attention_heads % tp:
            raise VegaInputError("--tensor-model-parallel-size",
                                 f"TP={tp} does not divide the {model.num_attention_heads} attention heads")
        if model.ffn_hidden_size % tp:
            raise VegaInputError("--tensor-model-parallel-size", f"TP={tp} does not divide ffn {model.ffn_hidden_size}")
        if model.padded_vocab_size % tp:
            raise VegaInputError("--make-vocab-size-divisible-by",
                                 f"padded vocabulary {model.padded_vocab_size} does not divide by TP={tp}")
        if model.num_layers % pp:
            raise VegaInputError("--pipeline-model-parallel-size",
                                 f"PP={pp} does not divide the {model.num_layers} layers")
        if world_size % (tp * pp):
            raise VegaInputError("--pipeline-model-parallel-size",
                                 f"TP*PP = {tp}*{pp} = {tp * pp} does not divide the world size {world_size}")
        vp = self.num_layers_per_virtual_pipeline_stage
        if vp is not None:
            if pp < 2:
                raise VegaInputError("--num-layers-per-virtual-pipeline-stage",
                                     "needs --pipeline-model-parallel-size > 1")
            if (model.num_layers // pp) % vp:
                raise VegaInputError("--num-layers-per-virtual-pipeline-stage",
                                     f"{vp} does not divide the {model.num_layers // pp} layers of a stage")
        if self.sequence_parallel and tp == 1:
            self.sequence_parallel = False  # nothing to split; Megatron does the same
        return world_size // (tp * pp)

    def virtual_stages(self, model: ModelConfig) -> int | None:
        vp = self.num_layers_per_virtual_pipeline_stage
        return None if vp is None else model.num_layers // self.pipeline_model_parallel_size // vp

    @property
    def recompute(self) -> str | None:
        return self.recompute_granularity or ("selective" if self.recompute_activations else None)



@dataclass
class TrainConfig:
    """Batches, optimiser, learning-rate schedule, precision."""
    micro_batch_size: int = option(4, "Samples per micro-batch per data-parallel rank.")
    global_batch_size: int | None = option(None, "Samples per optimizer step (default micro-batch x DP); "
                                                 "gradient accumulation makes up the difference.")
    train_iters: int = option(100, "Optimizer steps to train for.")
    lr: float = option(1e-4, "Peak learning rate.")
    min_lr: float = option(0.0, "Learning rate at the end of the decay.")
    lr_decay_style: str = option("linear", "Decay after warm-up.", choices=["constant", "linear", "cosine",
                                                                          "inverse-square-root"])
    lr_decay_iters: int | None = option(None, "Steps over which to decay (default --train-iters).")
    lr_warmup_iters: int = option(0, "Linear warm-up steps.")
    lr_warmup_fraction: float | None = option(None, "Warm-up as a fraction of the decay steps (overrides iters).")
    weight_decay: float = option(0.01, "Decoupled weight decay (not on biases and LayerNorms).")
    clip_grad: float = option(1.0, "Global gradient-norm clipping (0: off).")
    adam_beta1: float = option(0.9, "Adam beta1.")
    adam_beta2: float = option(0.999, "Adam beta2.")
    adam_eps: float = option(1e-6, "Adam epsilon.")
    bf16: bool = option(False, "bf16 weights and activations, fp32 main weights and optimizer state.")
    fp16: bool = option(False, "fp16 with dynamic loss scaling (a step with inf/NaN gradients is skipped).")
    loss_scale: float | None = option(None, "Static loss scale for fp16 (default: dynamic).")
    initial_loss_scale: float = option(2.0 ** 16, "Initial dynamic loss scale.")
    min_loss_scale: float = option(1.0, "Smallest dynamic loss scale.")
    loss_scale_window: int = option(1000, "Steps without overflow before the scale grows.")
    hysteresis: int = option(2, "Overflows tolerated before the scale shrinks.")
    seed: int = option(1234, "Seed for weights, dropout and data order.")
    eval_interval: int = option(1000, "Evaluate every N steps.")
    eval_iters: int = option(10, "Batches per evaluation.")
    exit_on_signal: bool = option(True, "On SIGTERM (Slurm preemption), save a checkpoint and exit cleanly.")

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclass
class CheckpointConfig:
    save: str | None = option(None, "Directory to save checkpoints to.")
    load: str | None = option(None, "Directory to resume from (its latest complete checkpoint). The model is the "
                                    "checkpoint's: model flags left out come from it, explicit ones must agree "
                                    "with it (dropouts and --init-method-std may differ).")
    save_interval: int | None = option(None, "Save every N steps (and always at the end and on SIGTERM).")
    overwrite: bool = option(False, "Allow --save to point at a directory holding another run.")
    no_load_optim: bool = option(False, "Load only the model weights (and not optimizer, scheduler, data position).")
    no_load_rng: bool = option(False, "Do not restore RNG states.")
    finetune: bool = option(False, "Load weights only and start at iteration 0.")
    ckpt_step: int | None = option(None, "Load this iteration of --load instead of its latest checkpoint.")
    override_opt_param_scheduler: bool = option(
        False, "On resume, take the learning-rate/weight-decay schedule from the flags, not from the checkpoint "
               "(e.g. to extend --train-iters). Without this or --use-checkpoint-opt-param-scheduler a "
               "difference between the two is an error.")
    use_checkpoint_opt_param_scheduler: bool = option(
        False, "On resume, keep the checkpoint's learning-rate/weight-decay schedule whatever the flags say.")


@dataclass
class LoggingConfig:
    log_interval: int = option(10, "Print a log line every N steps.")
    tensorboard_dir: str | None = option(None, "Write TensorBoard scalars here.")
    peak_tflops: float | None = option(None, "Peak TFLOP/s per rank for MFU (default: measured GEMM peak on CPU, "
                                             "the datasheet figure on known GPUs).")
