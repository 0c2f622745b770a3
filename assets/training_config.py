"""Training settings shared by the assets that need them (validation measures lengths with the
student's tokenizer; training trains)."""

import dagster as dg


class TrainingSettings(dg.Config):
    base_model: str = "tiny-llama"
    vocab_size: int = 3000
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    epochs: float = 3.0
    max_steps: int = -1
    max_tokens: int = 1_800_000  # compute budget of the quick CPU profile (~9 minutes here); 0 = no cap
    batch_size: int = 2
    learning_rate: float = 1.5e-3
    max_length: int = 4096
    seed: int = 0
    logging_steps: int = 20
    save_steps: int = 200

    def train_config(self, **fields):
        from subterra.training import TrainConfig

        return TrainConfig(**self.model_dump(), **fields)
