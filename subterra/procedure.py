"""The whole procedure as text: what a frontier model is given on every turn when the procedure
is *not* compiled (surface orchestration), and what the cost report prices."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from subterra.workflow import Workflow


def render_procedure(wf: Workflow) -> str:
    lines = [
        wf.assistant,
        f"Follow this procedure ({wf.title or wf.id}) step by step. Reply on every turn with a JSON form "
        '{"node": <step id>, "slots": {<slot>: <value copied verbatim from the user>}, "say": <your reply>}.',
    ]
    if wf.slots:
        lines.append("Slots:")
        for s in wf.slots.values():
            extra = f" one of {', '.join(s.values)}" if s.type == "enum" else ""
            lines.append(f"- {s.name} ({s.type}{extra}){': ' + s.description if s.description else ''}")
    lines.append(f"Steps (start at {wf.start}):")
    for n in wf.nodes.values():
        line = f"- {n.id}: {n.prompt}"
        if n.collect:
            line += f" Collect: {', '.join(n.collect)}."
        if n.next:
            line += f" Then go to {n.next}."
        for b in n.branches:
            line += f" If the user {b.when or 'chooses so'}, go to {b.to}."
        if n.end:
            line += f" The conversation ends ({n.end})."
        if n.say:
            line += f' Example: "{n.say[0]}"'
        lines.append(line)
    return "\n".join(lines)
