"""Attention over a context every row shares, then each row's own tokens.

The shared segments (a route's system prompt, or the context a set of candidates continues) are
read once per layer as one matrix product for all rows, never copied per row: that is what keeps a
1,200-token procedure prompt cheap across a batch. ``shared_context`` switches a model's attention
to it for the forwards run inside it.
"""

from __future__ import annotations

import threading

from subterra.runtime.row_cache import RowStep


SHARED_ATTENTION = "subterra_shared_context"
# what the current forward's attention reads besides the tokens it is given: ``segments`` every
# row shares, and ``step`` (a ``RowStep``) when the rows' own tokens live in a ``RowCache``
class _PerThread(threading.local):
    def __init__(self):
        self.state: dict = {"segments": [], "step": None}


_LOCAL = _PerThread()  # per thread: a server runs several models' forwards at once, one thread each


def _attend(q, own_kt, own_v, allowed, layer: int, scale: float):
    """Attention of ``q`` [b, kv_heads, m, dim] over the shared segments, then its own keys
    (transposed, [b, kv_heads, dim, n]) and values [b, kv_heads, n, dim] where ``allowed``
    (broadcast to [b, kv_heads, m, n], or None)."""
    import torch

    b, kv_heads, m, dim = q.shape
    flat = q.transpose(0, 1).reshape(kv_heads, b * m, dim)
    scores = []
    for segment in _LOCAL.state["segments"]:
        seg_k, _ = segment[layer]
        part = torch.bmm(flat, seg_k[0].transpose(1, 2))  # [kv_heads, b*m, P]
        scores.append(part.reshape(kv_heads, b, m, -1).transpose(0, 1))
    own = torch.matmul(q, own_kt)
    if allowed is not None:
        own = own.masked_fill(~allowed, float("-inf"))
    scores.append(own)
    weights = torch.softmax((torch.cat(scores, dim=-1) if len(scores) > 1 else own).float() * scale, dim=-1).to(q.dtype)
    parts = torch.split(weights, [s.shape[-1] for s in scores], dim=-1)
    out = torch.matmul(parts[-1], own_v)
    for segment, w in zip(_LOCAL.state["segments"], parts[:-1]):
        _, seg_v = segment[layer]
        flat_w = w.transpose(0, 1).reshape(kv_heads, b * m, -1)
        out = out + torch.bmm(flat_w, seg_v[0]).reshape(kv_heads, b, m, dim).transpose(0, 1)
    return out


def _shared_context_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention over a context every row shares, then each row's own tokens.

    ``query``/``key``/``value`` are this forward's [batch, heads, L, dim] (after RoPE). The shared
    segments (batch 1: a route's system prompt, or the context a set of candidates continues) are
    read once per layer as one matrix product for all rows, never copied per row: that is what
    keeps a 1,200-token procedure prompt cheap across a batch. Without a ``RowStep``, each row's own
    tokens are this forward's (causal among them). Under a ``RowStep`` the batch is one packed
    sequence of every row's tokens: their keys and values are written to the ``RowCache`` first,
    and each token sees its row's positions up to its own.
    """
    import torch

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    layer = module.layer_idx
    step: RowStep | None = _LOCAL.state["step"]
    if step is None:
        allowed = None
        if length > 1:
            allowed = torch.ones(length, length, dtype=torch.bool, device=query.device).tril().repeat(group, 1)
        q = query.reshape(batch, kv_heads, group * length, dim)
        out = _attend(q, key.transpose(2, 3), value, allowed, layer, scale)
        return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None
    keys, values = step.cache.keys[layer], step.cache.values[layer]
    keys[step.token_rows, :, :, step.token_positions] = key[0].transpose(0, 1)
    values[step.token_rows, :, step.token_positions] = value[0].transpose(0, 1)
    q = query[0]  # [heads, T, dim]
    out = torch.zeros(length, heads, dim, dtype=query.dtype, device=query.device)
    rows = step.last.shape[0]
    main = q[:, step.last].transpose(0, 1).reshape(rows, kv_heads, group, dim)
    main = _attend(main, keys[..., : step.width], values[:, :, : step.width], step.main_allowed, layer, scale)
    out[step.last[step.fed]] = main.reshape(rows, heads, dim)[step.fed]
    for runs in step.extra:
        s, e = runs.index.shape
        extra = q[:, runs.index].transpose(0, 1).reshape(s, kv_heads, group * e, dim)
        ek = keys[..., : runs.width].index_select(0, runs.rows)  # only the filled part is copied
        ev = values[:, :, : runs.width].index_select(0, runs.rows)
        extra = _attend(extra, ek, ev, runs.allowed, layer, scale).reshape(s, heads, e, dim).transpose(1, 2)
        out[runs.index[runs.valid]] = extra[runs.valid]
    return out[None], None


class shared_context:
    """Within it, ``model``'s forward attends to ``segments`` (per-layer key/value lists, batch 1)
    before each row's own tokens (``step``: see ``_shared_context_attention``)."""

    def __init__(self, model, segments: list[list[tuple]]):
        from transformers import AttentionInterface

        AttentionInterface.register(SHARED_ATTENTION, _shared_context_attention)
        self.config, self.segments = model.config, segments

    def __enter__(self):
        self.saved = (dict(_LOCAL.state), self.config._attn_implementation)
        _LOCAL.state.update(segments=self.segments, step=None)
        self.config._attn_implementation = SHARED_ATTENTION
        return self

    def set_step(self, step: RowStep | None) -> None:
        _LOCAL.state["step"] = step

    def __exit__(self, *exc):
        saved, self.config._attn_implementation = self.saved
        _LOCAL.state.clear()
        _LOCAL.state.update(saved)
        return False
