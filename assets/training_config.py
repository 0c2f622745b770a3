"""Training settings shared by the assets that need them (validation measures lengths with the
student's tokenizer; training trains)."""

from typing import Literal, Optional

import dagster as dg


class TrainingSettings(dg.Config):
    base_model: str = "tiny-llama"  # or a named base model ("smollm2-135m"), a transformers folder, a hub id
    vocab_size: int = 3000
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    epochs: float = 3.0
    max_steps: int = -1
    max_tokens: int = 1_800_000  # compute budget of the quick CPU profile (7-9 minutes of training here); 0 = no cap
    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1.5e-3
    warmup_ratio: float = 0.05
    bf16: Optional[bool] = None  # None: bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    torch_threads: int = 0  # 0: every core
    # transformers' loss over the full logits instead of TRL's tiled LM head (None: on a CPU, where
    # it is 1.2-2x faster; on a GPU the tiled head, which never holds a large vocabulary's logits)
    full_logits_loss: Optional[bool] = None
    # the model folder keeps Adam's state (twice the weights' size) and a continued run (incremental
    # recompile, repair round) resumes it: off for a model whose optimizer state is too big to keep
    optimizer_state: bool = True
    max_length: int = 4096
    seed: int = 0
    logging_steps: int = 20
    save_steps: int = 200

    def train_config(self, **fields):
        from dataclasses import fields as dataclass_fields

        from subterra.training import TrainConfig

        names = {f.name for f in dataclass_fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.model_dump().items() if k in names}, **fields)


class TrainedWeightsSettings(TrainingSettings):
    """Training settings, plus how a recompile trains: ``incremental`` continues from the last good
    weights on a mix weighted toward the new or changed paths (``subterra.incremental``); ``full``
    (or no usable previous model) trains from scratch."""

    recompile: Literal["incremental", "full"] = "incremental"
    changed_passes: float = 3.0  # passes over the conversations of new or changed paths
    replay_ratio: float = 2.0  # unchanged conversations replayed per changed one seen (kept when the mix is capped)
    min_fraction: float = 0.1  # the continued run's data: at least this share of the training set
    max_fraction: float = 0.35  # and at most this share
    continue_learning_rate: float = 5e-4

    def mix(self):
        from subterra.incremental import MixConfig

        return MixConfig(self.changed_passes, self.replay_ratio, self.min_fraction, self.max_fraction)
