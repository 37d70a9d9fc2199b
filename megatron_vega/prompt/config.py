"""Prompt-tuning and PANDA settings (docs/prompt_tuning_and_panda.md), Megatron-style flags generated from these
dataclasses.

Defaults follow the released PANDA / P-tuning v2 scripts where they exist (deep prompts of length 20, no
reparameterisation, N(0, 1) init, KD = MSE on logits weighted 0.1 x 0.1, train-mode teacher); the points the
spec leaves open are flags whose help says which choice the default is.
"""
from dataclasses import dataclass

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError

PROMPT_TYPES = ("deep", "shallow")
PROMPT_INITS = ("random", "vocab", "text")
PROMPT_ENCODERS = ("none", "lstm", "mlp")
KD_LOSSES = ("mse", "kl")
LOSS_FORMS = ("weighted", "interpolated")
TEACHER_MODES = ("train", "eval")


@dataclass
class PromptConfig:
    """Continuous prompts on a frozen backbone: only the prompt (and its encoder) and the task head train."""
    prompt_tuning: bool = option(False, "Prompt tuning: freeze the encoder, train a continuous prompt and the head.")
    prompt_type: str = option("deep", "deep: per-layer prefix keys/values (P-tuning v2, the PANDA code); shallow: "
                                      "vectors inserted after [CLS] in the input embeddings (Lester et al.; "
                                      "P-tuning).", choices=list(PROMPT_TYPES))
    prompt_length: int = option(20, "Number of prompt vectors (prefix positions).")
    prompt_init: str = option("random", "random: N(0, 1) as nn.Embedding (the PANDA code); vocab: embeddings of "
                                        "tokens drawn from the 5000 most frequent ids; text: of --prompt-init-text. "
                                        "Deep prompts without an encoder take those tokens' keys and values in the "
                                        "frozen backbone (Li & Liang's real-word activations).",
                              choices=list(PROMPT_INITS))
    prompt_init_text: str | None = option(None, "Text whose tokens (repeated to --prompt-length) initialise the "
                                                "prompt.")
    prompt_encoder: str = option("none", "Reparameterisation of the prompt: none (a free table), mlp (Linear-Tanh-"
                                         "Linear, P-tuning v2's prefix projection), lstm (bi-LSTM + MLP, P-tuning).",
                                 choices=list(PROMPT_ENCODERS))
    prompt_hidden_size: int = option(512, "Hidden size of the mlp prompt encoder.")
    prompt_dropout: float = option(0.1, "Dropout on deep-prompt keys/values (shallow prompts get the embedding "
                                        "dropout like tokens).")
    save_prompt: str | None = option(None, "Write the best-dev prompt and head to this file (a small .pt, "
                                           "independent of the parallel layout).")
    load_prompt: str | None = option(None, "Prompt file (prompt + head) of this task to evaluate, predict or continue.")
    init_prompt: str | None = option(None, "Vanilla prompt transfer: start from a source task's prompt file (its "
                                           "prompt, encoder and every head tensor of the same name and shape except "
                                           "the classifier, as PANDA's --prompt_transfer 1).")

    def validate(self) -> None:
        if not self.prompt_tuning:
            used = [f for f in ("save_prompt", "load_prompt", "init_prompt") if getattr(self, f)]
            if used:
                raise VegaInputError("--" + used[0].replace("_", "-"), "needs --prompt-tuning")
            return
        if self.prompt_length < 1:
            raise VegaInputError("--prompt-length", f"must be >= 1, got {self.prompt_length}")
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise VegaInputError("--prompt-init", "text needs --prompt-init-text")
        if self.load_prompt and self.init_prompt:
            raise VegaInputError("--init-prompt", "give --load-prompt (continue this task's prompt) or --init-prompt "
                                                  "(transfer from a source task), not both")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise VegaInputError("--prompt-dropout", f"must be in [0, 1), got {self.prompt_dropout}")


@dataclass
class PandaConfig:
    """PANDA: distil a target-like teacher (source prompt tuned on this task) into a fresh student prompt."""
    panda_teacher: str | None = option(None, "Teacher prompt file: a vanilla transfer (--init-prompt SOURCE) tuned "
                                             "on this task. Turns on PANDA; the teacher is never updated.")
    panda_kd: str = option("mse", "KD term: mse = mean((z_s - z_t)^2) / batch on raw logits (the released code); "
                                  "kl = T^2 KL(softmax(z_t/T) || softmax(z_s/T)).", choices=list(KD_LOSSES))
    panda_temperature: float = option(1.0, "Temperature T of the kl KD term.")
    panda_c: float = option(0.1, "Constant c in L = CE + c * lambda * KD (0.1 in the released code).")
    panda_lambda: float | None = option(None, "Balancing factor lambda (default: the transferability from "
                                              "--panda-transferability, else 0.1, the released code's --beta).")
    panda_transferability: str | None = option(None, "JSON from tools/prompt_transferability.py: lambda = "
                                                     "clip(T(source -> task), 0, 1), source = the teacher's.")
    panda_loss_form: str = option("weighted", "weighted: CE + c*lambda*KD (the code); interpolated: "
                                              "(1-lambda)*CE + lambda*KD (unverified reading of the paper).",
                                  choices=list(LOSS_FORMS))
    panda_teacher_mode: str = option("train", "train: teacher forward with dropout, as the released code; eval: "
                                              "deterministic teacher. Always without gradients.",
                                     choices=list(TEACHER_MODES))

    def validate(self, prompt: PromptConfig) -> None:
        if not self.panda_teacher:
            return
        if not prompt.prompt_tuning:
            raise VegaInputError("--panda-teacher", "needs --prompt-tuning")
        if self.panda_lambda is not None and not 0.0 <= self.panda_lambda <= 1.0:
            raise VegaInputError("--panda-lambda", f"must be in [0, 1], got {self.panda_lambda}")
        if self.panda_temperature <= 0:
            raise VegaInputError("--panda-temperature", f"must be > 0, got {self.panda_temperature}")
