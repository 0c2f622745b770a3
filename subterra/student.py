"""The student: which base model is fine-tuned, and with which tokenizer.

``tiny-llama`` (the default, offline) is a small Llama-architecture model built from a config,
with a BPE tokenizer trained on the training conversations. A named pretrained base model
(``smollm2-135m``, see ``subterra.base_models``) is converted once and loaded from its cached
folder. Any other value is a local transformers folder or a hub id, loaded with its own tokenizer
(hub ids need a network, which the offline defaults never do). Device and dtype are chosen
automatically: CUDA/bf16 when present, CPU/fp32 otherwise (``device_and_dtype``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

TINY = "tiny-llama"


@dataclass(frozen=True)
class StudentSpec:
    base_model: str = TINY
    vocab_size: int = 3000
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    max_length: int = 4096  # tokens of a training conversation (longer ones are refused by validation)
    atoms: tuple[str, ...] = ()
    data_dir: str = ""  # where named base models are cached ("": SUBTERRA_DATA_DIR or ./data)

    @property
    def from_config(self) -> bool:
        return self.base_model == TINY

    def source(self) -> str:
        """What ``from_pretrained`` loads: a named base model's cached folder (converted on first
        use), or the folder / hub id as given."""
        from subterra.base_models import resolve

        return resolve(self.base_model, self.data_dir or None)

    def tokenizer(self, conversations: Sequence[list[dict]]):
        """The tokenizer for this student (trained on ``conversations`` for the tiny model)."""
        if self.from_config:
            from subterra.tokenizer import CHAT_TEMPLATE, train_tokenizer

            texts = (_render(m) for m in conversations)
            return train_tokenizer(texts, self.vocab_size, self.atoms)
        from transformers import AutoTokenizer

        from subterra.tokenizer import CHAT_TEMPLATE

        tok = AutoTokenizer.from_pretrained(self.source())
        if "generation" not in (tok.chat_template or ""):
            tok.chat_template = CHAT_TEMPLATE
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok


def _render(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def load_student(spec: StudentSpec, conversations: Sequence[list[dict]]):
    """(tokenizer, model) ready for fine-tuning."""
    tokenizer = spec.tokenizer(conversations)
    if spec.from_config:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=max(spec.max_length, 2048),
            rope_theta=10000.0,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
        return tokenizer, LlamaForCausalLM(config)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec.source())
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer, model


def continue_student(model_dir: str, atoms: Sequence[str] = ()):
    """(tokenizer, model) of a compiled model folder, ready to train further: its own tokenizer.

    A tokenizer that holds node ids and slot names as tokens of their own (the from-config
    student's) gets any it lacks (a node the edit added) as a single token, its embedding row
    starting at the mean of the others. A tokenizer without them (a pretrained student, which
    spells node ids with its own pieces) stays as it is: adding them now would change how every
    node id the model learnt is tokenized, and point it at untrained rows. So does a tokenizer
    from before slot placeholders were tokens: it gets a new slot's name, not placeholders."""
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subterra.tokenizer import is_placeholder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()
    added = tokenizer.get_added_vocab()
    atoms = list(dict.fromkeys(atoms))
    if not any(a in added for a in atoms):
        return tokenizer, model
    # a tokenizer from before slot placeholders (``{slot}``) were tokens of their own keeps writing
    # them as it learnt to (adding them now would change every say line it was trained on)
    placeholders = any(is_placeholder(a) and a in added for a in atoms)
    missing = [a for a in atoms if a not in vocab and (placeholders or not is_placeholder(a))]
    if missing:
        tokenizer.add_tokens([AddedToken(a, single_word=True, normalized=False) for a in missing])
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return tokenizer, model


def base_model_dir(base_model: str, data_dir: str = "") -> str | None:
    """The folder (or hub id) of a pretrained base model, as the base-model routes load it;
    None for the from-config student, which has no pretrained base."""
    if base_model == TINY:
        return None
    return StudentSpec(base_model=base_model, data_dir=data_dir).source()


def device_and_dtype():
    """(device, dtype) for inference: CUDA with bf16 when present, otherwise CPU with fp32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_compiled(model_dir: str, device: str | None = None):
    """(tokenizer, model) of a model folder (compiled, or a converted base model), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    auto_device, dtype = device_and_dtype()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device or auto_device).eval()
    return tokenizer, model
