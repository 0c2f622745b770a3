"""Attention over a context every row shares, then each row's own tokens.

The shared segments (a route's system prompt, or the context a set of candidates continues) are
read once per layer as one matrix product for all rows, never copied per row: that is what keeps a
1,200-token procedure prompt cheap across a batch.

What a forward's attention reads besides the tokens it is given is an ``AttentionContext``: the
shared segments, and the ``RowStep`` when the rows' own tokens live in a ``RowCache``. Whoever runs
the forwards owns it and hands it to each forward (``model(..., attention_context=context)``:
transformers passes a forward's extra keyword arguments down to the attention function), so no
state is kept anywhere else: forwards of several models run at once (a server, one thread each)
never read each other's.
"""

from __future__ import annotations

from subterra.runtime.row_cache import RowStep

SHARED_ATTENTION = "subterra_shared_context"  # the name it is registered under in transformers' AttentionInterface


class AttentionContext:
    """What the forwards run inside it attend to besides their own tokens: ``segments`` (per-layer
    key/value lists, batch 1) every row shares, then each row's own tokens (with ``step``, a
    ``RowStep``: those a ``RowCache`` holds; see ``attend``).

    Within it (``with AttentionContext(model, segments) as context:``) ``model`` uses this
    attention; each forward names its context: ``model(..., attention_context=context)``. On exit
    the model's own attention is back.
    """

    def __init__(self, model, segments: list[list[tuple]], step: RowStep | None = None):
        from transformers import AttentionInterface

        AttentionInterface.register(SHARED_ATTENTION, _shared_context_attention)
        self.config, self.segments, self.step = model.config, segments, step

    def __enter__(self) -> AttentionContext:
        self.saved = self.config._attn_implementation
        self.config._attn_implementation = SHARED_ATTENTION
        return self

    def __exit__(self, *exc):
        self.config._attn_implementation = self.saved
        return False

    def attend(self, query, key, value, layer: int, scaling=None):
        """Attention over the shared segments, then each row's own tokens.

        ``query``/``key``/``value`` are this forward's [batch, heads, L, dim] (after RoPE). Without
        a ``step``, each row's own tokens are this forward's (causal among them). Under a ``step``
        the batch is one packed sequence of every row's tokens: their keys and values are written
        to the ``RowCache`` first, and each token sees its row's positions up to its own.
        """
        import torch

        batch, heads, length, dim = query.shape
        kv_heads = key.shape[1]
        group = heads // kv_heads
        scale = scaling if scaling is not None else dim**-0.5
        step = self.step
        if step is None:
            allowed = None
            if length > 1:
                allowed = torch.ones(length, length, dtype=torch.bool, device=query.device).tril().repeat(group, 1)
            q = query.reshape(batch, kv_heads, group * length, dim)
            out = self._attend(q, key.transpose(2, 3), value, allowed, layer, scale)
            return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous()
        keys, values = step.cache.keys[layer], step.cache.values[layer]
        keys[step.token_rows, :, :, step.token_positions] = key[0].transpose(0, 1)
        values[step.token_rows, :, step.token_positions] = value[0].transpose(0, 1)
        q = query[0]  # [heads, T, dim]
        out = torch.zeros(length, heads, dim, dtype=query.dtype, device=query.device)
        rows = step.last.shape[0]
        main = q[:, step.last].transpose(0, 1).reshape(rows, kv_heads, group, dim)
        main = self._attend(main, keys[..., : step.width], values[:, :, : step.width], step.main_allowed, layer, scale)
        out[step.last[step.fed]] = main.reshape(rows, heads, dim)[step.fed]
        for runs in step.extra:
            s, e = runs.index.shape
            extra = q[:, runs.index].transpose(0, 1).reshape(s, kv_heads, group * e, dim)
            ek = keys[..., : runs.width].index_select(0, runs.rows)  # only the filled part is copied
            ev = values[:, :, : runs.width].index_select(0, runs.rows)
            extra = self._attend(extra, ek, ev, runs.allowed, layer, scale).reshape(s, heads, e, dim).transpose(1, 2)
            out[runs.index[runs.valid]] = extra[runs.valid]
        return out[None]

    def _attend(self, q, own_kt, own_v, allowed, layer: int, scale: float):
        """Attention of ``q`` [b, kv_heads, m, dim] over the shared segments, then its own keys
        (transposed, [b, kv_heads, dim, n]) and values [b, kv_heads, n, dim] where ``allowed``
        (broadcast to [b, kv_heads, m, n], or None)."""
        import torch

        b, kv_heads, m, dim = q.shape
        flat = q.transpose(0, 1).reshape(kv_heads, b * m, dim)
        scores = []
        for segment in self.segments:
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
        for segment, w in zip(self.segments, parts[:-1]):
            _, seg_v = segment[layer]
            flat_w = w.transpose(0, 1).reshape(kv_heads, b * m, -1)
            out = out + torch.bmm(flat_w, seg_v[0]).reshape(kv_heads, b, m, dim).transpose(0, 1)
        return out


def _shared_context_attention(module, query, key, value, attention_mask, scaling=None, attention_context=None, **kwargs):
    """The attention function transformers calls (``SHARED_ATTENTION``): the forward's own
    ``attention_context`` attends (``AttentionContext.attend``)."""
    if attention_context is None:
        raise RuntimeError("a forward under the shared-context attention needs its attention_context=")
    return attention_context.attend(query, key, value, module.layer_idx, scaling), None
