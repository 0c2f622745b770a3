"""A workflow as a flowchart to draw: nodes placed in layers, top to bottom, in pixels.

A node's layer is its shortest distance (in moves) from the start, found breadth-first, so loops
and back edges cannot push a node further down. Within a layer, nodes are ordered by the mean x
of their parents in the layers above (the barycentre heuristic, one downward pass), which removes
the plainest crossings, and placed under those parents as far as the row allows; ties keep
breadth-first order, so the output is deterministic. The chat page (``subterra/web/chat.html``)
draws the boxes and routes the edges from these coordinates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections import deque

if TYPE_CHECKING:
    from subterra.workflow import Workflow

NODE_WIDTH = 168  # a node's box, in pixels
NODE_HEIGHT = 44
GAP_X = 36  # between boxes of one layer
GAP_Y = 64  # between layers (room for the arrows)
MARGIN = 24  # around the drawing
BACK_ROOM = 120  # more on the right, when edges go back up more than one layer (or loop on a node)


def layers(wf: Workflow) -> dict[str, int]:
    """Each node's layer: its shortest distance from the start. Nodes the start cannot reach
    (a valid workflow has none) go into one layer below the rest."""
    layer = {wf.start: 0}
    queue = deque([wf.start])
    while queue:
        node = queue.popleft()
        for edge in wf.out_edges(node):
            if edge.target not in layer:
                layer[edge.target] = layer[node] + 1
                queue.append(edge.target)
    below = max(layer.values(), default=-1) + 1
    for node in wf.nodes:
        layer.setdefault(node, below)
    return layer


def flowchart(wf: Workflow) -> dict:
    """The workflow ``wf`` laid out for drawing: ``nodes`` with the top-left corner (``x``, ``y``)
    of their ``node_width`` x ``node_height`` box and their ``layer`` (``layer_gap`` pixels apart),
    ``edges`` in the workflow's order, and the drawing's ``width`` and ``height``."""
    layer = layers(wf)
    order = {node: i for i, node in enumerate(layer)}  # breadth-first order, then the unreachable
    rows: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for node in order:
        rows[layer[node]].append(node)

    parents: dict[str, list[str]] = {}
    for edge in wf.edges:
        if layer[edge.source] < layer[edge.target]:
            parents.setdefault(edge.target, []).append(edge.source)

    widest = max(len(row) for row in rows)
    span = widest * NODE_WIDTH + (widest - 1) * GAP_X
    pitch = NODE_WIDTH + GAP_X
    lowest, highest = MARGIN + NODE_WIDTH / 2, MARGIN + span - NODE_WIDTH / 2  # where a box's centre may be
    centre: dict[str, float] = {}  # x of a box's centre
    for row in rows:
        wanted = {n: _mean([centre[p] for p in parents.get(n, ())]) for n in row}
        row.sort(key=lambda n: (wanted[n] is None, wanted[n] or 0.0, order[n]))
        if all(w is None for w in wanted.values()):  # the start (or only unreachable nodes): centred
            first = (lowest + highest) / 2 - (len(row) - 1) * pitch / 2
            xs = [first + i * pitch for i in range(len(row))]
        else:  # under their parents, pushed apart, the row centred on where it wanted to be
            xs = []
            for n in row:
                after = xs[-1] + pitch if xs else lowest
                xs.append(max(after, wanted[n] if wanted[n] is not None else after))
            drift = _mean([x - wanted[n] for x, n in zip(xs, row) if wanted[n] is not None])
            xs = [x - drift for x in xs]
            for i in range(len(xs)):  # back inside the drawing: the left edge, then the right
                xs[i] = max(xs[i], xs[i - 1] + pitch if i else lowest)
            for i in reversed(range(len(xs))):
                xs[i] = min(xs[i], highest - (len(xs) - 1 - i) * pitch)
        centre.update(zip(row, xs))

    nodes = []
    for depth, row in enumerate(rows):
        for node in row:
            n = wf.nodes[node]
            nodes.append({
                "id": node,
                "prompt": n.prompt,
                "end": n.end,
                "layer": depth,
                "x": round(centre[node] - NODE_WIDTH / 2),
                "y": MARGIN + depth * (NODE_HEIGHT + GAP_Y),
            })
    edges = [{"source": e.source, "target": e.target, "when": e.when, "kind": e.kind} for e in wf.edges]
    around = any(layer[e.target] < layer[e.source] - 1 or e.source == e.target for e in wf.edges)
    return {
        "workflow": wf.id,
        "title": wf.title,
        "start": wf.start,
        "nodes": nodes,
        "edges": edges,
        "node_width": NODE_WIDTH,
        "node_height": NODE_HEIGHT,
        "layer_gap": GAP_Y,
        "width": round(span + 2 * MARGIN + (BACK_ROOM if around else 0)),
        "height": len(rows) * NODE_HEIGHT + (len(rows) - 1) * GAP_Y + 2 * MARGIN,
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
