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
            blocked = None
            if length > 1:
                blocked = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1).repeat(group, 1)
            q = query.reshape(batch, kv_heads, group * length, dim)
            out = self._attend(q, key.transpose(2, 3), value, blocked, layer, scale)
            return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous()
        keys, values = step.cache.keys[layer], step.cache.values[layer]
        keys[step.token_rows, :, :, step.token_positions] = key[0].transpose(0, 1)
        values[step.token_rows, :, step.token_positions] = value[0].transpose(0, 1)
        q = query[0].reshape(kv_heads, group, length, dim)
        out = query.new_empty(kv_heads, group, length, dim)
        shared = [(seg_k[0].transpose(1, 2), seg_v[0]) for seg_k, seg_v in (segment[layer] for segment in self.segments)]
        for run in step.runs:  # each row over its own cache as it lies (views, no copy)
            end = run.start + run.n
            mine = q[:, :, run.start : end].reshape(kv_heads, group * run.n, dim)
            own = torch.bmm(mine, keys[run.row, :, :, : run.length])
            if run.blocked is not None:
                own[:, :, run.length - run.n :].masked_fill_(run.blocked, float("-inf"))
            scores = torch.cat([torch.bmm(mine, seg_kt) for seg_kt, _ in shared] + [own], dim=-1) if shared else own
            weights = torch.softmax(scores.float() * scale, dim=-1).to(query.dtype)
            mine = torch.bmm(weights[:, :, weights.shape[-1] - run.length :], values[run.row, :, : run.length])
            at = 0
            for seg_kt, seg_v in shared:
                width = seg_kt.shape[-1]
                mine = mine + torch.bmm(weights[:, :, at : at + width], seg_v)
                at += width
            out[:, :, run.start : end] = mine.view(kv_heads, group, run.n, dim)
        return out.view(heads, length, dim).transpose(0, 1)[None]

    def _attend(self, q, own_kt, own_v, blocked, layer: int, scale: float):
        """Attention of ``q`` [b, kv_heads, m, dim] over the shared segments, then its own keys
        (transposed, [b, kv_heads, dim, n]) and values [b, kv_heads, n, dim] but where ``blocked``
        (None, or [m, k]: over the last k of them)."""
        import torch

        b, kv_heads, m, dim = q.shape
        flat = q.transpose(0, 1).reshape(kv_heads, b * m, dim)
        scores = []
        for segment in self.segments:
            seg_k, _ = segment[layer]
            part = torch.bmm(flat, seg_k[0].transpose(1, 2))  # [kv_heads, b*m, P]
            scores.append(part.reshape(kv_heads, b, m, -1).transpose(0, 1))
        own = torch.matmul(q, own_kt)
        if blocked is not None:
            own[..., own.shape[-1] - blocked.shape[-1] :].masked_fill_(blocked, float("-inf"))
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
