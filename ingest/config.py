"""One frozen settings object for the whole app, read from env (prefix ``DOTCHI_``) and an optional ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGED_E5 = "packaged:multilingual-e5-small"


def _default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dotchi"


class Settings(BaseSettings):
    """All of dotchi's settings. Paths are relative to the working directory (the repo root under ``make``)."""

    model_config = SettingsConfigDict(env_prefix="DOTCHI_", env_file=".env", frozen=True, extra="ignore")

    # --- store ---
    data_dir: Path = Path(".dotchi")
    store_path: Path = Path(".dotchi/chroma")
    chroma_host: str | None = Field(default=None, description="When set, use a Chroma server (HttpClient).")
    chroma_port: int = 8000
    collection: str = Field(default="dotchi", min_length=3, max_length=60)

    # --- corpus / ingest ---
    corpus_dir: Path = Path("corpus")
    # Sizes in weighted characters (CJK counts 2): 1200 is about 300 e5 tokens in English, 400 in Japanese.
    chunk_size: int = Field(default=1200, ge=100, le=4000, description="Max weighted characters per chunk.")
    chunk_overlap: int = Field(default=150, ge=0, le=1000, description="Weighted characters carried over.")
    max_file_mb: float = Field(default=20.0, gt=0)
    embed_batch_size: int = Field(default=32, ge=1, le=1024)

    # --- embeddings ---
    embedding_model: str = PACKAGED_E5
    model_cache_dir: Path = Field(default_factory=_default_cache_dir)

    # --- answering ---
    # Retrieval (bot/retrieval.py): each ranked list (dense per corpus language, BM25) contributes its top
    # `retrieval_per_list` chunks; reciprocal rank fusion scores a chunk sum(1 / (rrf_k + rank)); the best
    # `retrieval_k` fused hits go to the gate and the composer.
    retrieval_k: int = Field(default=8, ge=1, le=50, description="Fused hits kept per question.")
    retrieval_per_list: int = Field(default=20, ge=1, le=200, description="Candidates per ranked list before fusion.")
    rrf_k: int = Field(default=60, ge=1, le=1000, description="Reciprocal rank fusion constant (larger = flatter).")
    # Dense lists per language: up to this many live chunks they match filtered queries (one unfiltered query for
    # len(languages) * 4 * per_list candidates split by language, plus a language-filtered query for a language it
    # leaves short); above it, one unfiltered query for len(languages) * 2 * per_list candidates, split by language
    # afterwards and never filtered, because Chroma's filtered search scans the matching records and took 1.6 s at
    # 100k chunks against 37 ms unfiltered (`python -m bot bench`, scale section); bench run 4: both ~19 ms at 1k
    # chunks, 68 vs 21 ms at 10k, so the switch sits between them.
    dense_filter_max_chunks: int = Field(
        default=5_000, ge=0,
        description="Largest store whose per-language dense lists match filtered queries (filtered where needed).",
    )
    # Up to this many live chunks, dense search is exact over the vectors ingest saves with the keyword index
    # (memory-mapped; one matrix-vector product: 0.13 ms at the default corpus's 223 chunks, 0.17 ms at 2k, 8 ms at
    # 20k on this machine) instead of a Chroma query (~3 ms a question, bench run 13); above it Chroma's HNSW index
    # answers, since an exact scan grows with the store.
    exact_dense_max_chunks: int = Field(
        default=5_000, ge=0,
        description="Largest store searched exactly in memory (above it, Chroma's approximate index).",
    )
    # The rule reader names a catalog task by meaning only when the question's embedding is at least this similar to
    # the task's (cosine; below it only a written alias names the task).
    semantic_task_min: float = Field(default=0.90, ge=0.0, le=1.0, description="Cosine bar for a task by meaning.")
    reader: Literal["learned", "rules"] = Field(
        default="learned", description="How questions are read: the model trained on corpus/reader/, or cue rules."
    )
    # Relevance gate on the best dense similarity (tuned on the dev set): the dev split's off-topic top similarity
    # was <= 0.8554 and in-scope >= 0.857; the first blind set had an off-topic near-miss at 0.8623, so the bare
    # bar is 0.865 and in-scope questions below it need a catalog task, a flow cue or a reference to the survey.
    gate_accept: float = Field(default=0.865, ge=0, le=1, description="Top similarity at or above which: in scope.")
    gate_with_match: float = Field(
        default=0.80, ge=0, le=1, description="Top similarity at or above which, with a task or cue: in scope."
    )
    gate_offtopic_p: float = Field(
        default=0.6, ge=0, le=1, description="Reader's off-topic probability at or above which a question is refused."
    )
    # The learned reader's content probability counts as a match too: every off-topic question of the dev set was
    # read as off-topic (p >= 0.92), while content questions about the survey's figures or sections that name no
    # task or cue (「Figure 2の…順番は？」, "the three perspectives ... real-world tasks") fell below the bare bar.
    gate_content_p: float = Field(
        default=0.9, ge=0, le=1, description="Reader's content probability at or above which a question matches."
    )
    generator: Literal["none", "openai", "ollama", "llamacpp"] = "none"
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(default=60.0, gt=0)
    llm_max_tokens: int = Field(default=512, ge=16, le=8192)  # bounds a rambling local model's answer

    # --- UI ---
    host: str = "127.0.0.1"
    port: int = Field(default=7860, ge=1, le=65535)
    ui_auth: str | None = Field(default=None, description="Optional 'user:password' for the Gradio login.")
    max_question_chars: int = Field(default=2000, ge=50)

    @field_validator("chroma_host")
    @classmethod
    def _empty_host_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"DOTCHI_CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than "
                f"DOTCHI_CHUNK_SIZE ({self.chunk_size})"
            )
        return self

    @property
    def uses_server(self) -> bool:
        return self.chroma_host is not None

    @property
    def keyword_dir(self) -> Path:
        """Where the keyword index of this store and collection is kept: beside the on-disk store (for a Chroma
        server, beside ``store_path`` on this machine, one folder per server)."""
        where = f"server-{self.chroma_host}-{self.chroma_port}" if self.uses_server else "local"
        return self.store_path.parent / f"{self.store_path.name}-keyword" / where / self.collection

    def describe_store(self) -> str:
        if self.uses_server:
            return f"Chroma server http://{self.chroma_host}:{self.chroma_port} (collection '{self.collection}')"
        return f"Chroma on disk at {self.store_path} (collection '{self.collection}')"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings(...)`` instead)."""
    return Settings()
