"""``subterra export``: the exported folder loads with plain transformers, and the form's JSON
schema, compiled by llguidance (one of the grammar engines behind vLLM's and SGLang's structured
outputs), accepts the forms the runtime writes and refuses a node, a slot name or an enum value
the workflow does not have."""

import json
from pathlib import Path

import polars as pl
import pytest

from subterra.export import SERVING_FILE, export_model, form_schema
from subterra.forms import Form, render_form

ASK_DATE = Form("ask_date", {"destination": "Lisbon"}, "When do you want to leave for {destination}?")


@pytest.fixture(scope="module")
def exported(trained, mini_workflow, tmp_path_factory):
    _config, result, _logs = trained
    return export_model(result.model_dir, mini_workflow, str(tmp_path_factory.mktemp("export") / "mini_booking"))


@pytest.fixture(scope="module")
def tokenizer(exported):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(exported["out_dir"])


@pytest.fixture(scope="module")
def engine_view(tokenizer):
    """llguidance's tokenizer built as vLLM's guidance backend builds it: each token's text read
    from the vocabulary."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer)


class TokenBytes:
    """The exported tokenizer as ``llguidance.TokenizerWrapper`` takes it: each token's bytes as the
    tokenizer decodes them, a continuing piece without its mark (``##is`` is ``is``)."""

    def __init__(self, tokenizer, engine_view, prefix: str | None):
        added = set(tokenizer.added_tokens_decoder)
        mark = (prefix or "").encode()
        self.tokens = []
        for token_id in range(len(tokenizer)):
            text = engine_view.decode_bytes([token_id])
            continuing = mark and token_id not in added and text.startswith(mark)
            self.tokens.append(text[len(mark):] if continuing else text)
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = list(tokenizer.all_special_ids)
        self._tokenizer = tokenizer

    def __call__(self, text: str | bytes) -> list[int]:
        text = text.decode() if isinstance(text, bytes) else text
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def grammar_tokenizer(exported, tokenizer, engine_view):
    """llguidance's tokenizer of the exported model, reading every token as the model means it."""
    import llguidance

    prefix = json.loads(Path(exported["serving"]).read_text())["continuing_subword_prefix"]
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(TokenBytes(tokenizer, engine_view, prefix)))


@pytest.fixture(scope="module")
def grammar(exported, grammar_tokenizer):
    """The exported form schema (read back from the export) compiled by llguidance."""
    from llguidance import LLMatcher

    schema = json.loads(Path(exported["serving"]).read_text())["form_schema"]
    compiled = LLMatcher.grammar_from_json_schema(schema)
    assert LLMatcher.validate_grammar(compiled, grammar_tokenizer) == ""
    return compiled


@pytest.fixture(scope="module")
def new_matcher(grammar, grammar_tokenizer):
    """A fresh matcher of the form grammar."""
    from llguidance import LLMatcher

    def new():
        matcher = LLMatcher(grammar_tokenizer, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    return new


def form_tokens(tokenizer, grammar_tokenizer, text: str) -> list[int]:
    """The tokens the model writes ``text`` with; the grammar engine must read them as ``text``
    (else the matcher would judge other text than the form)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert grammar_tokenizer.decode_bytes(ids) == text.encode()
    return ids


def test_export_loads_with_plain_transformers(exported, tokenizer, mini_workflow, trained):
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(exported["out_dir"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    source = Path(trained[1].model_dir)
    assert (source / "optimizer.pt").exists() and not (out / "optimizer.pt").exists()  # training state stays behind
    assert {"model.safetensors", "tokenizer.json", "value_lexicon.json"} <= set(exported["model_files"])

    serving = json.loads((out / SERVING_FILE).read_text())
    assert serving["system_prompt"] == mini_workflow.assistant
    messages = [{"role": "system", "content": serving["system_prompt"]}, {"role": "user", "content": "Lisbon please"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # the very prompt the runtime feeds (``Codec.system`` + ``Codec.user``)
    assert prompt == (f"<|im_start|>system\n{mini_workflow.assistant}<|im_end|>\n"
                      "<|im_start|>user\nLisbon please<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert serving["stop"] == ["<|im_end|>"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == model.config.eos_token_id


def test_serving_file_describes_the_workflow(exported, mini_workflow):
    serving = json.loads(Path(exported["serving"]).read_text())
    assert serving["form_schema"] == form_schema(mini_workflow)
    assert serving["workflow"]["id"] == "mini_booking" and serving["start"] == "greet"
    assert serving["terminal"] == {"done": "success", "cancel": "abandoned", "human": "escalated"}
    assert serving["say"]["ask_date"] == ["When do you want to leave for {destination}?", "What date should I book?"]
    assert serving["slots"]["cabin"] == {"type": "enum", "filled": "chosen", "values": ["economy", "business"]}
    assert serving["slots"]["destination"]["filled"] == "copied"
    readme = Path(exported["readme"]).read_text()
    assert "response_format" in readme and "verbatim" in readme


def test_form_schema_shape(mini_workflow):
    schema = form_schema(mini_workflow)
    assert list(schema["properties"]) == schema["required"] == ["node", "slots", "say"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["node"]["enum"] == list(mini_workflow.nodes)
    slots = schema["properties"]["slots"]
    assert list(slots["properties"]) == ["destination", "travellers", "date", "cabin"]
    assert slots["additionalProperties"] is False
    assert slots["properties"]["cabin"]["enum"] == ["economy", "business"]
    assert "enum" not in slots["properties"]["destination"]  # a string slot's values are examples, not a constraint


def test_form_schema_boolean_is_yes_or_no(mini_workflow):
    from dataclasses import replace

    from subterra.workflow import Slot

    wf = replace(mini_workflow, slots={**mini_workflow.slots, "insured": Slot("insured", "boolean")})
    assert form_schema(wf)["properties"]["slots"]["properties"]["insured"]["enum"] == ["yes", "no"]


@pytest.mark.parametrize("form", [
    ASK_DATE,
    Form("confirm", {"travellers": "2", "cabin": "business"}, "Shall I confirm {travellers} seats to {destination}?"),
    Form("cancel", {}, "No problem, nothing was booked."),
], ids=["ask_date", "enum", "no_slots"])
def test_llguidance_accepts_a_runtime_form(form, tokenizer, grammar_tokenizer, new_matcher):
    matcher = new_matcher()
    for token in form_tokens(tokenizer, grammar_tokenizer, render_form(form)):
        assert matcher.consume_token(token), matcher.get_error()
    assert matcher.is_accepting()


@pytest.mark.parametrize("text, wrong", [
    (render_form(Form("nowhere", {"destination": "Lisbon"}, "Where to?")), '"nowhere"'),
    (render_form(Form("ask_date", {"seat": "12A"}, "When?")), '"seat"'),
    (render_form(Form("confirm", {"cabin": "first"}, "Ready to confirm?")), '"first"'),
], ids=["unknown_node", "unknown_slot", "undeclared_enum_value"])
def test_llguidance_refuses_what_the_workflow_does_not_have(text, wrong, tokenizer, grammar_tokenizer, new_matcher):
    ids = form_tokens(tokenizer, grammar_tokenizer, text)
    matcher = new_matcher()
    taken = matcher.try_consume_tokens(ids)
    assert taken < len(ids)
    accepted = tokenizer.decode(ids[:taken])
    # everything before the wrong field is accepted; the stream is refused inside it
    assert text.startswith(accepted) and text.index(wrong) <= len(accepted) < text.index(wrong) + len(wrong)
    assert not new_matcher().consume_tokens(ids)


def test_export_refuses_a_folder_that_is_not_an_export(trained, mini_workflow, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an earlier export"):
        export_model(trained[1].model_dir, mini_workflow, str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / SERVING_FILE).exists()


def test_cli_exports_the_serving_model(trained, mini_workflow, settings, store, monkeypatch, tmp_path):
    """``subterra export ID``: the model that serves the workflow, with the definition it was compiled from."""
    from subterra.cli import main

    model_dir = trained[1].model_dir
    store.replace_partition("trained_weights", mini_workflow.id, pl.DataFrame({
        "model_dir": [model_dir], "definition": [json.dumps(mini_workflow.to_dict())],
        "trained_at": ["2027-01-01T00:00:00+00:00"], "recompile": ["full"], "continued_from": [""],
    }))
    monkeypatch.setenv("SUBTERRA_DATA_DIR", str(settings.data_dir))
    out = tmp_path / "export"
    assert main(["export", mini_workflow.id, "--out", str(out)]) == 0
    serving = json.loads((out / SERVING_FILE).read_text())
    assert serving["workflow"]["hash"] == mini_workflow.short_hash
    assert (out / "model.safetensors").read_bytes() == (Path(model_dir) / "model.safetensors").read_bytes()
    assert main(["export", "never_compiled", "--out", str(tmp_path / "other")]) == 1


def test_engine_view_reads_continuing_pieces_literally(exported, tokenizer, engine_view, grammar):
    """What the export's README warns of: built from the vocabulary, llguidance reads the tiny
    tokenizer's continuing pieces with their mark (a word it never saw is all pieces); a free
    string still passes the schema."""
    from llguidance import LLMatcher

    assert "## The tokenizer's continuing pieces" in Path(exported["readme"]).read_text()
    text = render_form(Form("ask_date", {"destination": "Qzxjv"}, "When do you want to leave for {destination}?"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert b"##" in engine_view.decode_bytes(ids) and b"##" not in text.encode()
    matcher = LLMatcher(engine_view, grammar)
    assert matcher.consume_tokens(ids) and matcher.is_accepting()
