"""The optional chat model behind the LLM writer (``bot.writers.LLMWriter``), chosen from ``settings.generator``.
Backends are imported lazily; the default install needs none of them. A local GGUF runs in llama.cpp's
OpenAI-compatible server and is reached through ``ChatOpenAI``, so no own LangChain wrapper is needed."""

from __future__ import annotations

from langchain_core.language_models.chat_models import BaseChatModel

from ingest.config import Settings

LLAMACPP_DEFAULT_URL = "http://127.0.0.1:8080/v1"  # llama_cpp.server's default host and port


class GeneratorError(RuntimeError):
    """The configured LLM backend cannot be used; the message says what to install or set."""


def make_chat_model(settings: Settings) -> BaseChatModel:
    """The chat model for ``settings.generator`` (openai | ollama | llamacpp)."""
    kind = settings.generator
    if kind == "openai":
        try:
            from langchain_openai import ChatOpenAI
        except ImportError as exc:
            raise GeneratorError(
                "DOTCHI_GENERATOR=openai needs langchain-openai: pip install 'dotchi[openai]'"
            ) from exc
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "not-needed"
        return ChatOpenAI(
            model=settings.llm_model or "gpt-4o-mini",
            base_url=settings.llm_base_url,
            api_key=key,
            timeout=settings.llm_timeout_s,
            max_retries=0,
            temperature=0,
        )
    if kind == "ollama":
        try:
            from langchain_ollama import ChatOllama
        except ImportError as exc:
            raise GeneratorError(
                "DOTCHI_GENERATOR=ollama needs langchain-ollama: pip install 'dotchi[ollama]'"
            ) from exc
        return ChatOllama(
            model=settings.llm_model or "llama3.1",
            base_url=settings.llm_base_url,
            temperature=0,
            client_kwargs={"timeout": settings.llm_timeout_s},
        )
    if kind == "llamacpp":  # llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server --model X.gguf`)
        try:
            from langchain_openai import ChatOpenAI
        except ImportError as exc:
            raise GeneratorError(
                "DOTCHI_GENERATOR=llamacpp needs langchain-openai: pip install 'dotchi[openai]'"
            ) from exc
        return ChatOpenAI(
            model=settings.llm_model or "local",
            base_url=settings.llm_base_url or LLAMACPP_DEFAULT_URL,
            api_key="not-needed",
            timeout=settings.llm_timeout_s,
            max_retries=0,
            temperature=0,
            # ChatOpenAI's max_tokens goes out as max_completion_tokens, which llama.cpp's server ignores.
            extra_body={"max_tokens": settings.llm_max_tokens},
        )
    if kind == "none":
        raise GeneratorError("DOTCHI_GENERATOR=none: no LLM backend is configured (use openai, ollama or llamacpp)")
    raise GeneratorError(f"unknown generator '{kind}' (use none, openai, ollama or llamacpp)")
