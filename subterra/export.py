"""Export a compiled model for a GPU serving engine (vLLM, SGLang, TGI and the like).

The deployed runtime (``subterra.runtime``) constrains every form it fills in its own decoding
loop. A serving engine, with its own batching and kernels, can apply the same kind of constraint
through *structured outputs*: a JSON schema compiled into a token mask at every step. ``export_model`` writes what such an engine needs: the model folder as plain transformers
loads it (weights, tokenizer, chat template; no training state) and ``subterra_serving.json``:
the system prompt, the chat template, the form's JSON schema (``form_schema``), the say templates
per node, the terminal nodes with their outcome, and the rules the schema cannot express, with a
README on how to use them.

A schema enforces the node id, the slot names, enum and boolean values. It cannot enforce the
copy constraint (a free value is a verbatim span of the user's last message), nor the runtime's
other per-turn rules (values a message states in words, at most one step's slots, values already
held not captured again): ``subterra serve`` applies those.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

from subterra.atomic import replace_dir
from subterra.forms import FORM_KEYS
from subterra.runtime.candidates import CHOSEN_TYPES
from subterra.runtime.encoding import END
from subterra.workflow import Workflow

SERVING_FILE = "subterra_serving.json"
README_FILE = "README.md"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
BOOLEAN_VALUES = ("yes", "no")  # what the runtime offers a boolean slot (``Codec.value_candidates``)
# what training leaves beside the weights to resume from: no part of the model
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin", "trainer_state.json")


def slot_schema(slot) -> dict:
    """The JSON schema of one slot's value: a string; an enum slot's among its declared values, a
    boolean's yes or no (what the runtime offers them); any other is copied from the user's message."""
    schema: dict = {"type": "string"}
    if slot.description:
        schema["description"] = slot.description
    if slot.type == "enum":
        schema["enum"] = [str(v) for v in slot.values]
    elif slot.type == "boolean":
        schema["enum"] = list(BOOLEAN_VALUES)
    return schema


def form_schema(wf: Workflow) -> dict:
    """The JSON schema of the workflow's form: ``node`` one of its node ids, ``slots`` an object of
    its slot names (each optional, no other name), ``say`` a string; the keys in that order, no other
    key. A grammar engine keeps the properties' order (llguidance does), so slots come in the
    workflow's order."""
    properties = {
        "node": {"type": "string", "enum": list(wf.nodes)},
        "slots": {
            "type": "object",
            "properties": {name: slot_schema(slot) for name, slot in wf.slots.items()},
            "additionalProperties": False,
        },
        "say": {"type": "string"},
    }
    return {
        "title": f"{wf.id} form",
        "type": "object",
        "properties": {key: properties[key] for key in FORM_KEYS},
        "required": list(FORM_KEYS),
        "additionalProperties": False,
    }


def chat_template(model_dir: str | Path) -> str:
    """The chat template of a model folder: ``chat_template.jinja``, else the one in
    ``tokenizer_config.json``; ``ValueError`` if it has none."""
    folder = Path(model_dir)
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text()
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    if not isinstance(template, str) or not template:
        raise ValueError(f"{folder} has no chat template ({CHAT_TEMPLATE_FILE} or tokenizer_config.json)")
    return template


def continuing_prefix(model_dir: str | Path) -> str | None:
    """The prefix the tokenizer's vocabulary marks a word's continuing pieces with (``##`` for the
    from-scratch student's tokenizer, ``subterra.tokenizer``), if it has one."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("model", {}).get("continuing_subword_prefix") or None


def runtime_rules(wf: Workflow) -> list[str]:
    """What the runtime enforces on a form of ``wf`` beyond its schema (``form_schema``)."""
    copied = [name for name, slot in wf.slots.items() if slot.type not in CHOSEN_TYPES]
    typed = [name for name, slot in wf.slots.items() if slot.type in ("integer", "number", "date")]
    rules = []
    if copied:
        rules.append(f"a value of {', '.join(copied)} is a verbatim span of whole words of the user's last message "
                     "(an integer or date slot may also hold the canonical form of what the message says in words: "
                     "'two of us' -> 2, 'next Friday' -> a date)")
    if typed:
        rules.append(f"a value of {', '.join(typed)} reads as its type and lies in the slot's range")
    if wf.slots:
        rules += ["a form holds at most as many slots as one step of the workflow collects",
                  "a value the conversation already holds is not captured again when the message offers another one"]
    rules.append("say: each {slot} placeholder is filled from the values the conversation holds; a say naming a "
                 "value not held is shown as the node's first say template whose placeholders are all held")
    return rules


def serving_spec(wf: Workflow, model_dir: str | Path) -> dict:
    """The contents of ``subterra_serving.json`` for ``wf`` served by the model in ``model_dir``."""
    return {
        "workflow": {"id": wf.id, "title": wf.title, "hash": wf.short_hash},
        "system_prompt": wf.assistant,
        "chat_template": chat_template(model_dir),
        "stop": [END],
        "decoding": "greedy (temperature 0), as the runtime decodes",
        "form_schema": form_schema(wf),
        "start": wf.start,
        "say": {node.id: list(node.say) for node in wf.nodes.values()},
        "terminal": {node.id: node.end for node in wf.nodes.values() if node.is_terminal},
        "slots": {name: {"type": slot.type, "filled": "chosen" if slot.type in CHOSEN_TYPES else "copied",
                         **({"values": [str(v) for v in slot.values]} if slot.type == "enum" else {})}
                  for name, slot in wf.slots.items()},
        "not_enforced_by_schema": runtime_rules(wf),
        "continuing_subword_prefix": continuing_prefix(model_dir),
    }


def _is_training_state(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in TRAINING_STATE)


def _model_files(model_dir: Path) -> list[Path]:
    """The files of the model folder an engine loads: every top-level file but training state
    (checkpoints are sub-folders: not copied)."""
    return sorted(p for p in model_dir.iterdir() if p.is_file() and not _is_training_state(p.name))


def export_model(model_dir: str, wf: Workflow, out_dir: str) -> dict:
    """Write into ``out_dir`` the model folder (so ``AutoModelForCausalLM.from_pretrained(out_dir)``
    loads it), ``subterra_serving.json`` and ``README.md``; return what was written.

    The export is built beside ``out_dir`` and put in place whole; an existing ``out_dir`` is
    replaced only if it is empty or an earlier export (it holds ``subterra_serving.json``)."""
    source, target = Path(model_dir).resolve(), Path(out_dir).resolve()
    if not (source / "config.json").is_file():
        raise ValueError(f"{source} is not a model folder (no config.json)")
    if target == source or source in target.parents:
        raise ValueError(f"the export folder {target} must not be the model folder {source} or inside it")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / SERVING_FILE).is_file())):
        raise ValueError(f"{target} exists and is not an earlier export; choose an empty or new folder")
    spec = serving_spec(wf, source)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        copied = []
        for path in _model_files(source):
            shutil.copyfile(path, staging / path.name)  # plain permissions: a server running as another user reads it
            copied.append(path.name)
        (staging / SERVING_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
        (staging / README_FILE).write_text(serving_readme(spec))
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "out_dir": str(target),
        "model_dir": str(source),
        "workflow": wf.id,
        "model_files": copied,
        "serving": str(target / SERVING_FILE),
        "readme": str(target / README_FILE),
    }


def serving_readme(spec: dict) -> str:
    """The export's README: what is in the folder and how to serve it with structured outputs."""
    wf = spec["workflow"]
    schema = json.dumps(spec["form_schema"], ensure_ascii=False)
    system = json.dumps(spec["system_prompt"], ensure_ascii=False)
    terminal = ", ".join(f"`{node}` ({outcome})" for node, outcome in spec["terminal"].items()) or "none"
    rules = "\n".join(f"* {rule}" for rule in spec["not_enforced_by_schema"])
    prefix = spec.get("continuing_subword_prefix")
    tokenizer_note = "" if not prefix else f"""
## The tokenizer's continuing pieces

This tokenizer marks a piece that continues a word with `{prefix}` in its vocabulary (`Lima` may be
`L {prefix}i {prefix}ma`); its decoder removes the mark, so transformers decodes text correctly. A
grammar backend that reads each token's text from the vocabulary does not apply that decoder
(llguidance's `llguidance.hf.from_tokenizer`, which vLLM's guidance backend uses, reads `{prefix}i`):
it masks out a continuing piece wherever the schema fixes the text (an enum value), and the model
must spell such a word with pieces it never used inside a word. Node ids, slot names and the
form's structure are tokens of their own in this tokenizer and are not affected; free strings
(copied values, `say`) are accepted either way. Check that every enum value is whole tokens
(`tokenizer.tokenize(value)` has no `{prefix}`), or serve with `subterra serve`.
"""
    template_note = "" if "{% generation %}" not in spec["chat_template"] else """
## Chat template

The template wraps assistant turns in `{% generation %}` markers: a transformers extension that
marks the tokens to train on. vLLM and SGLang render templates with transformers; a renderer with
plain Jinja may reject the tag. Removing the markers changes nothing in the rendered text.
"""
    return f"""# {wf['title'] or wf['id']}: compiled model for a serving engine

Workflow `{wf['id']}` (definition hash `{wf['hash']}`). This folder is a plain transformers model
folder (`AutoModelForCausalLM.from_pretrained(this_folder)`, `AutoTokenizer.from_pretrained(this_folder)`)
plus `{SERVING_FILE}`, which holds what serving it the way Subterra does needs:

* `system_prompt`: the system message of every conversation: {system}
* `chat_template`: ChatML, as the model was trained; `stop`: end a turn at `{END}`.
* `form_schema`: the JSON schema of one assistant turn, `{{"node", "slots", "say"}}` in that order.
* `say`: the say templates of every node; `terminal`: the nodes that end the conversation,
  with their outcome: {terminal}.
* `slots`: each slot's type and whether its value is chosen (enum, boolean) or copied from the
  user's message.

## Serving with structured outputs

Start the engine on this folder (`vllm serve ./export`, `python -m sglang.launch_server
--model-path ./export`, TGI `--model-id ./export`) and send the schema with every request, decoding
greedily (`temperature: 0`). With the OpenAI-compatible chat API (vLLM, SGLang, recent TGI):

```json
{{"messages": [{{"role": "system", "content": {system}}},
              {{"role": "user", "content": "..."}}],
 "temperature": 0,
 "response_format": {{"type": "json_schema",
                     "json_schema": {{"name": "{wf['id']}_form", "strict": true, "schema": <form_schema>}}}}}}
```

vLLM also takes the schema as `extra_body={{"structured_outputs": {{"json": <form_schema>}}}}`
(`guided_json` in older versions); SGLang's native `/generate` as `sampling_params.json_schema`
(a string); TGI's `/generate` as `parameters.grammar = {{"type": "json", "value": <form_schema>}}`.
Engine versions differ in these names: check your engine's documentation.

Every reply is a form. Keep the form text itself as the assistant message in the conversation
history (the model was trained on forms, not on the text the user reads); show the user the
`say` with each `{{slot}}` filled from the values the conversation holds so far (every form's
`slots` merged, later values replacing earlier ones). The conversation has ended when `node` is a
terminal node.

The form schema:

```json
{schema}
```

## What the schema cannot enforce

The schema constrains the node id, the slot names, and enum and boolean values (`yes`/`no`). The
deployed runtime (`subterra serve`, `subterra chat`) also enforces, per turn, what no static
schema can express:

{rules}

An engine serving this schema alone can therefore write a value the user never said (a misspelt
city, a name from training): check each copied value against the user's message, or serve with
`subterra serve`. The schema also fixes the slots' order to their order in the workflow's
`slots` (engines keep a schema's property order); the runtime accepts them in any order.
{tokenizer_note}{template_note}"""
