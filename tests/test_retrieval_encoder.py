"""The real default encoder (MiniLM shipped in a PyPI package) offline, its disk cache, and ItemRetriever.from_run."""

import os

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.data.schema import ITEM_COLUMNS
from mrrec_lib.retrieval.encoder import TextEncoder, embedding_key, make_encoder, model_slug, resolve_model_path
from mrrec_lib.retrieval.items import ItemRetriever, item_embeddings, item_embeddings_path
from mrrec_lib.runs import run_paths

TEXTS = ["dark roast coffee beans, 2 lb bag", "moisturising shampoo for curly hair", "green tea with jasmine"]


@pytest.fixture(scope="module")
def encoder():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return make_encoder(Config(device="cpu"))


def test_default_name_resolves_to_the_bundled_model():
    path = resolve_model_path("all-MiniLM-L6-v2")
    assert os.path.isdir(path) and os.path.exists(os.path.join(path, "model.safetensors"))
    assert resolve_model_path("Qwen/Qwen3-Embedding-0.6B") == "Qwen/Qwen3-Embedding-0.6B"
    assert model_slug("Qwen/Qwen3-Embedding-0.6B") == "qwen-qwen3-embedding-0-6b"


def test_minilm_encodes_offline_normalised(encoder):
    assert encoder.dim == 384 and make_encoder(Config(device="cpu")) is encoder
    emb = encoder.encode(TEXTS, kind="doc")
    assert emb.shape == (3, 384) and emb.dtype == np.float32 and emb.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    q = encoder.encode(["a strong coffee for mornings"], kind="query")
    assert int(np.argmax(emb @ q[0])) == 0
    assert encoder.encode([], kind="query").shape == (0, 384)
    with pytest.raises(ValueError, match="kind"):
        encoder.encode(TEXTS, kind="item")


def test_query_instruction_is_prepended(encoder, monkeypatch):
    seen = {}
    monkeypatch.setattr(encoder.model, "encode", lambda texts, **kw: seen.update(kw) or np.ones((len(texts), 384)))
    monkeypatch.setattr(encoder, "query_instruction", "Instruct: find the product\nQuery:")
    encoder.encode(["x"], kind="query")
    assert seen["prompt"] == "Instruct: find the product\nQuery:"
    seen.clear()
    encoder.encode(["x"], kind="doc")
    assert "prompt" not in seen and "prompt_name" not in seen  # MiniLM defines no document prompt


def test_embedding_cache_is_hit_the_second_time(encoder, tmp_path, monkeypatch):
    first = encoder.encode_cached(TEXTS, "doc", tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.endswith(".npy")]) == 1

    def boom(*a, **k):
        raise AssertionError("re-encoded despite the cache")

    monkeypatch.setattr(encoder, "encode", boom)
    np.testing.assert_array_equal(encoder.encode_cached(TEXTS, "doc", tmp_path), first)
    with pytest.raises(AssertionError, match="re-encoded"):
        encoder.encode_cached([*TEXTS, "one more"], "doc", tmp_path)  # new text set: a new key
    with pytest.raises(AssertionError, match="re-encoded"):
        encoder.encode_cached(TEXTS, "query", tmp_path)  # kind is part of the key


def test_encode_to_file_resumes_from_parts(encoder, tmp_path, monkeypatch):
    texts = [f"product number {i}" for i in range(7)]
    want = encoder.encode(texts, "doc")
    calls = []
    real = TextEncoder.encode

    def flaky(self, batch, kind="query", show_progress=False):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-way
        return real(self, batch, kind, show_progress)

    monkeypatch.setattr(TextEncoder, "encode", flaky)
    out = tmp_path / "emb.npy"
    with pytest.raises(KeyboardInterrupt):
        encoder.encode_to_file(texts, "doc", out, chunk=3)
    assert not out.exists()
    got = encoder.encode_to_file(texts, "doc", out, chunk=3)
    assert calls == [3, 3, 1, 1]  # resumed at the third part
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())


def test_item_retriever_from_run_caches_item_embeddings(encoder, tmp_path, monkeypatch):
    monkeypatch.delenv("MRREC_CACHE", raising=False)
    cfg = Config(outputs_dir=str(tmp_path), run_name="r", device="cpu", cache_dir=str(tmp_path / "cache"))
    paths = run_paths(cfg)
    items = pd.DataFrame({c: [""] * 3 for c in ITEM_COLUMNS}).assign(item_id=["a", "b", "c"], text=TEXTS, price=np.nan)
    items.to_parquet(paths.data / "items.parquet")
    r = ItemRetriever.from_run(cfg, paths)
    cached = item_embeddings_path(cfg, paths)
    assert cached.exists() and cached.parent == tmp_path / "cache" / "emb"  # shared across runs, not in the run folder
    assert not list(paths.data.glob("*.npy"))
    assert r.ranks(["shampoo for curls", "jasmine tea"], ["b", "c"]).tolist() == [1, 1]
    ids, _ = r.search(["coffee"], 2)
    assert ids[0][0] == "a"

    monkeypatch.setattr(TextEncoder, "encode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-embedded")))
    r2 = ItemRetriever.from_run(cfg, paths)  # same pool: the cached matrix, no encoding
    assert len(r2) == 3
    other = cfg.model_copy(update={"run_name": "ablation", "encoder_query_instruction": "Query:"})
    other_paths = run_paths(other)
    items.to_parquet(other_paths.data / "items.parquet")
    assert item_embeddings_path(other, other_paths) == cached  # documents never see the query instruction
    np.testing.assert_array_equal(item_embeddings(other, items, encoder), np.load(cached))  # another run: no encoding
    with pytest.raises(AssertionError, match="re-embedded"):
        item_embeddings(cfg, items.assign(text=[*TEXTS[:2], "a changed item"]), encoder)  # another pool: a new key
    monkeypatch.undo()
    for index_type in ("ivf", "hnsw"):  # built from the memory-mapped cache
        r3 = ItemRetriever.from_run(cfg.model_copy(update={"index_type": index_type}), paths)
        assert r3.ranks(["shampoo for curls", "jasmine tea"], ["b", "c"]).tolist() == [1, 1]


def test_embedding_key_covers_what_changes_the_vectors():
    base = embedding_key("m", "", 256, "doc", ["a", "b"])
    assert embedding_key("m", "Instruct: x", 256, "doc", ["a", "b"]) == base
    assert embedding_key("m", "Instruct: x", 256, "query", ["a", "b"]) != embedding_key(
        "m", "", 256, "query", ["a", "b"]
    )
    for other in (("n", "", 256, "doc", ["a", "b"]), ("m", "", 128, "doc", ["a", "b"]), ("m", "", 256, "doc", ["ab"])):
        assert embedding_key(*other) != base


def test_concurrent_writers_encode_once(encoder, tmp_path, monkeypatch):
    """Two parallel ablation runs asking for one pool: the second waits for the first's file instead of re-encoding."""
    import threading
    import time

    calls = []

    def slow(self, texts, kind="query", show_progress=False):
        calls.append(len(texts))
        time.sleep(0.3)
        return np.ones((len(texts), 384), dtype=np.float32)

    monkeypatch.setattr(TextEncoder, "encode", slow)
    out = tmp_path / "emb.npy"
    threads = [threading.Thread(target=encoder.encode_to_file, args=(TEXTS, "doc", out)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [3] and np.load(out).shape == (3, 384)
