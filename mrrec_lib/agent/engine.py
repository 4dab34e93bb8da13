"""Continuous-batching multi-turn decoding for a local transformers policy, with the KV cache kept across turns.

The turn-synchronous path (`LocalPolicy.generate_ids` per turn) re-encodes every row's whole conversation at each
turn (an ~850-token prompt plus every tool result, again and again), keeps finished rows decoding padding until the
slowest row of the batch stops, and copies the whole KV cache at every step (`DynamicCache` grows by `torch.cat`).
On 2 CPU cores that, not the model, is most of a request's time. This engine instead:

- keeps each row's keys/values from turn to turn and feeds only the new tokens (a tool result, the closing token);
- computes the prompt prefix the rollouts of a call share (system prompt + tool schema) once, copied into new rows;
- drops a row from the decode batch the moment it stops and lets a waiting request take its place;
- writes new keys/values into preallocated buffers instead of re-concatenating the cache at every step.

Rows are right-aligned in one cache (column T-1 holds every row's latest token); a row's padding and the columns
it never wrote are masked, and positions are tracked per row, so a row sees exactly the context it would see alone.
Greedy output matches the turn-synchronous path up to floating-point ties (tested); sampling draws from a
per-rollout generator, so a sampled rollout does not depend on which rows share its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from mrrec_lib.agent.parse import TOOL_CLOSE
from mrrec_lib.agent.policy import repeated_ngram_ends

_STOP_WINDOW = 16  # tokens decoded to look for `</tool_call>` (it spans far fewer)
_MIN_SHARED_PREFIX = 32  # a shorter common prefix is not worth a separate forward
_SPARE = 64  # columns allocated ahead so decode steps write in place


class _BufferLayer(DynamicLayer):
    """One layer's keys/values, [rows, heads, columns, head_dim], in a buffer with spare columns: a step writes in place."""

    def __init__(self, kbuf: torch.Tensor, vbuf: torch.Tensor, n: int):
        super().__init__()
        self.kbuf, self.vbuf, self.n = kbuf, vbuf, n
        self.keys, self.values = kbuf[:, :, :n], vbuf[:, :, :n]
        self.is_initialized = True
        self.device = kbuf.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        s = key_states.shape[2]
        if self.n + s > self.kbuf.shape[2]:
            cap = max(2 * self.kbuf.shape[2], self.n + s + _SPARE)
            self.kbuf, self.vbuf = _copy_into(self.keys, cap), _copy_into(self.values, cap)
        self.kbuf[:, :, self.n : self.n + s] = key_states
        self.vbuf[:, :, self.n : self.n + s] = value_states
        self.n += s
        self.keys, self.values = self.kbuf[:, :, : self.n], self.vbuf[:, :, : self.n]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.n

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.n + query_length, 0


def _copy_into(t: torch.Tensor, cap: int) -> torch.Tensor:
    out = t.new_zeros(t.shape[0], t.shape[1], cap, t.shape[3])
    out[:, :, : t.shape[2]] = t
    return out


@dataclass
class _KV:
    """The cache of a set of rows, right-aligned: column `width - 1` holds every row's latest token."""

    layers: list[_BufferLayer]
    mask: torch.Tensor  # [rows, width] bool: which columns each row attends to

    @property
    def width(self) -> int:
        return self.mask.shape[1]


def _stack(parts: list[_KV]) -> _KV:
    """The rows of several caches in one new cache (shorter rows padded on the left), with spare columns."""
    width = max(p.width for p in parts)
    rows = sum(p.mask.shape[0] for p in parts)
    layers = []
    for i, ref in enumerate(parts[0].layers):
        shape = (rows, ref.kbuf.shape[1], width + _SPARE, ref.kbuf.shape[3])
        k, v = ref.kbuf.new_zeros(shape), ref.vbuf.new_zeros(shape)
        r = 0
        for p in parts:
            b = p.mask.shape[0]
            k[r : r + b, :, width - p.width : width] = p.layers[i].keys
            v[r : r + b, :, width - p.width : width] = p.layers[i].values
            r += b
        layers.append(_BufferLayer(k, v, width))
    mask = torch.zeros(rows, width, dtype=torch.bool)
    r = 0
    for p in parts:
        b = p.mask.shape[0]
        mask[r : r + b, width - p.width :] = p.mask
        r += b
    return _KV(layers, mask)


def _select(kv: _KV, idx: list[int]) -> _KV:
    """Some rows of a cache in a new cache, without the leading columns none of them attends to."""
    mask = kv.mask[idx]
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    width = mask.shape[1] - start
    layers = [
        _BufferLayer(
            _copy_into(layer.keys[idx, :, start:], width + _SPARE),
            _copy_into(layer.values[idx, :, start:], width + _SPARE),
            width,
        )
        for layer in kv.layers
    ]
    return _KV(layers, mask[:, start:].clone())


@dataclass
class EngineRow:
    """One rollout in the engine: its context so far and the turn it is generating."""

    key: Any
    context: list[int]  # every token of the conversation so far (prompt + completion)
    cached: int = 0  # how many of `context` the cache holds (= the position id of the next token fed)
    turn: list[int] = field(default_factory=list)  # tokens generated in the current turn
    budget: int = 0  # new tokens this turn may take
    generator: torch.Generator | None = None


@dataclass
class Decoding:
    """How to pick a token: greedy (temperature 0, optional no-repeat guard) or sampled with temperature/top-p."""

    temperature: float = 0.0
    top_p: float = 1.0
    no_repeat_ngram: int = 0


# on_turn_end(row, turn_ids, stop) -> tokens to append (the row continues) or None (the rollout is over);
# stop is "eos", "tool_call" or None (turn budget reached).
TurnEnd = Callable[[EngineRow, list[int], "str | None"], "list[int] | None"]


class KVEngine:
    """Decodes many multi-turn rollouts together on one model; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, stop_ids: set[int], max_rows: int):
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids, self.max_rows = stop_ids, max(1, max_rows)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._prefix: tuple[tuple[int, ...], _KV] | None = None
        self.stats = {"prefill_tokens": 0, "decode_steps": 0, "prefix_tokens_reused": 0}

    @torch.no_grad()
    def run(self, rows: list[EngineRow], decoding: Decoding, on_turn_end: TurnEnd) -> None:
        """Run every row to its end, at most `max_rows` at a time; `row.budget` must be set for the first turn."""
        waiting = list(rows)
        self._share_prefix([r.context for r in rows])
        active: list[EngineRow] = []
        kv: _KV | None = None
        while waiting or active:
            joining = waiting[: self.max_rows - len(active)]
            waiting = waiting[len(joining) :]
            feed = [r for r in active if len(r.context) - r.cached > 1] + joining
            if feed:
                kv = self._prefill(kv, active, feed, decoding)
                active = [r for r in active if r not in feed] + feed
            else:
                kv = self._decode(kv, active, decoding)
            active, kv = self._advance(active, kv, on_turn_end)

    def _empty(self, rows: int) -> _KV:
        cfg = self.model.config
        heads = cfg.num_key_value_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (rows, heads, _SPARE, head_dim)
        layers = [
            _BufferLayer(
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                0,
            )
            for _ in range(cfg.num_hidden_layers)
        ]
        return _KV(layers, torch.zeros(rows, 0, dtype=torch.bool))

    def _share_prefix(self, contexts: list[list[int]]) -> None:
        """Encode the prompt prefix all `contexts` share once per run (not kept: the weights may change between runs)."""
        self._prefix = None
        if len(contexts) < 2:
            return
        first = contexts[0]
        n = min(len(c) for c in contexts) - 1  # leave at least one token to feed per row
        for c in contexts[1:]:
            n = next((i for i in range(n) if c[i] != first[i]), n)
        if n < _MIN_SHARED_PREFIX:
            return
        prefix = tuple(first[:n])
        kv, _ = self._forward(self._empty(1), [list(prefix)], [0])
        self._prefix = (prefix, kv)

    def _start(self, row: EngineRow) -> _KV:
        """The cache a new row starts from: the shared prefix when its context starts with it, else nothing."""
        if self._prefix is not None:
            prefix, kv = self._prefix
            if len(row.context) > len(prefix) and tuple(row.context[: len(prefix)]) == prefix:
                row.cached = len(prefix)
                self.stats["prefix_tokens_reused"] += len(prefix)
                return kv
        return self._empty(1)

    def _prefill(self, kv: _KV | None, active: list[EngineRow], feed: list[EngineRow], decoding: Decoding) -> _KV:
        """Feed every row of `feed` its uncached tokens in one forward and pick its next token.

        Returns the cache of `[rows of active not in feed] + feed`, in that order.
        """
        index = {id(r): i for i, r in enumerate(active)}
        parts = [_select(kv, [index[id(r)]]) if kv is not None and id(r) in index else self._start(r) for r in feed]
        sub, logits = self._forward(_stack(parts), [r.context[r.cached :] for r in feed], [r.cached for r in feed])
        for r, lg in zip(feed, logits, strict=True):
            r.cached = len(r.context)
            self._pick(r, lg, decoding)
        keep = [index[id(r)] for r in active if r not in feed]
        return _stack([_select(kv, keep), sub]) if keep and kv is not None else sub

    def _decode(self, kv: _KV, active: list[EngineRow], decoding: Decoding) -> _KV:
        """One step for every active row: its last picked token is fed and the next one picked."""
        new, logits = self._forward(kv, [[r.context[-1]] for r in active], [r.cached for r in active])
        for r, lg in zip(active, logits, strict=True):
            r.cached += 1
            self._pick(r, lg, decoding)
        return new

    def _forward(self, kv: _KV, segments: list[list[int]], positions: list[int]) -> tuple[_KV, torch.Tensor]:
        """One forward over `segments` (left-padded to one width) after the cached columns; last-token logits."""
        b, s, width = len(segments), max(len(x) for x in segments), kv.width
        ids = torch.full((b, s), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        pos = torch.zeros((b, s), dtype=torch.long)
        seg_mask = torch.zeros((b, s), dtype=torch.bool)
        for i, (seg, p0) in enumerate(zip(segments, positions, strict=True)):
            ids[i, s - len(seg) :] = torch.tensor(seg)
            pos[i, s - len(seg) :] = torch.arange(p0, p0 + len(seg))
            seg_mask[i, s - len(seg) :] = True
        if s > 1:
            self.stats["prefill_tokens"] += int(seg_mask.sum())
        else:
            self.stats["decode_steps"] += 1
        mask = torch.cat([kv.mask, seg_mask], dim=1)
        allowed = torch.ones(s, width + s, dtype=torch.bool).tril(diagonal=width)[None] & mask[:, None, :]
        bias = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, torch.finfo(self.dtype).min)
        cache = DynamicCache()
        cache.layers = kv.layers
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=bias[:, None].to(self.device),
            position_ids=pos.to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return _KV(kv.layers, mask), out.logits[:, -1].float().cpu()

    def _pick(self, row: EngineRow, logits: torch.Tensor, decoding: Decoding) -> None:
        """Choose the row's next token and append it to its context and turn."""
        if decoding.temperature > 0:
            probs = torch.softmax(logits / decoding.temperature, dim=-1)
            if decoding.top_p < 1:
                sorted_p, order = probs.sort(descending=True)
                sorted_p[sorted_p.cumsum(0) - sorted_p >= decoding.top_p] = 0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            tok = int(torch.multinomial(probs, 1, generator=row.generator))
        else:
            n, ids = decoding.no_repeat_ngram, row.turn
            if n > 0 and len(ids) >= n - 1:
                banned = repeated_ngram_ends(ids, n)
                if banned:
                    logits = logits.clone()
                    logits[banned] = -float("inf")
            tok = int(logits.argmax())
        row.turn.append(tok)
        row.context.append(tok)

    def _advance(self, active: list[EngineRow], kv: _KV, on_turn_end: TurnEnd) -> tuple[list[EngineRow], _KV | None]:
        """End the turns that stopped: `on_turn_end` decides whether a row continues; finished rows leave the batch."""
        keep: list[int] = []
        for i, r in enumerate(active):
            stop = self._stop(r)
            if stop is False:
                keep.append(i)
                continue
            more = on_turn_end(r, list(r.turn), stop)
            if more is None:
                continue
            r.context.extend(more)
            r.turn = []
            keep.append(i)
        if len(keep) == len(active):
            return active, kv
        rows = [active[i] for i in keep]
        return rows, (_select(kv, keep) if rows else None)

    def _stop(self, row: EngineRow) -> str | None | bool:
        """ "eos" / "tool_call" when the turn's last token ends it, None when its budget is spent, False otherwise."""
        if not row.turn:
            return False
        if row.turn[-1] in self.stop_ids:
            return "eos"
        if TOOL_CLOSE in self.tokenizer.decode(row.turn[-_STOP_WINDOW:], skip_special_tokens=False):
            return "tool_call"
        if len(row.turn) >= row.budget:
            return None
        return False
