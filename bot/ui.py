"""Gradio 6 chat UI for dotchi: streamed chat, verdict card, Figure 2 drawn as SVG, cited sources, JSON API.

``build_app(service)`` returns the Blocks app; ``serve(settings)`` loads the answering service once and launches it.
Every string that comes from the store or the user is HTML-escaped before it reaches an HTML panel.

Chat input (``INPUT_JS``, installed by the hint under the text box): Enter sends, Shift+Enter adds a line, and an
Enter that confirms an IME conversion (``isComposing``, keyCode 229, or between compositionstart/-end) never sends;
a counter shows the length and, over ``settings.max_question_chars``, says before sending that the middle will be
left out (``clip_question`` keeps the beginning and the end, where the ask usually is). Layout (``PAGE_CSS``): on a
desktop the chat and the panels side by side, sized so the input and the verdict fit in 900 px; at or below
``PHONE_MAX`` px one column — verdict card, chat, input (kept in reach at the bottom), flow drawn vertically at full
size, sources folded. Panels (card, flow, sources) follow the UI language; the chat keeps each answer's language.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere

import gradio as gr  # noqa: E402

from bot.compose import Citations  # noqa: E402
from bot.knowledge import DecisionFlow  # noqa: E402
from bot.pipeline import Pipeline  # noqa: E402
from bot.service import AnswerService  # noqa: E402
from bot.text import CLIP_SEP, CLIP_SEP_LEN, clip_question, tokenize  # noqa: E402, F401 (CLIP_SEP: tests)
from bot.writers import AnswerEvent, answer_shell  # noqa: E402
from ingest.config import Settings  # noqa: E402

log = logging.getLogger(__name__)

LANGS = ("ja", "en")
STREAM_EVERY_S = 0.05  # at most this often a streamed token batch is pushed to the browser
PHONE_MAX = 700  # px of viewport width at or below which the one-column phone layout applies
TALL_W = 300  # px: width of the vertical flow picture, drawn 1:1 on a phone (labels stay at their CSS size)
EXAMPLES = (
    "感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？",
    "社内の問い合わせに答えるチャットボットを作りたい。LLMとファインチューニング、どっち？",
    "ラベル付きデータが30件しかない文書分類には、LLMとファインチューニングのどっちが向いている？",
    "Named entity recognition with 50k labelled sentences: LLM or fine-tuning?",
    "We need to solve math word problems step by step. Should we use an LLM or fine-tune a model?",
    "Predicting a similarity score between two sentences (regression): LLM or a fine-tuned model?",
)

# UI chrome and the answer panels (card, flow, sources), switched by the language radio. The chat keeps each
# answer in the language it was asked in.
UI: dict[str, dict[str, str]] = {
    "ja": {
        "header": "## dotchi — LLM？ それともファインチューニング？\n"
                  "NLPタスクに大規模言語モデル（LLM）を使うか、小さなモデルをファインチューニングするかを、"
                  "Yang ら（2023）のサーベイの図2に沿って、出典付きでお答えします。",
        "chat": "チャット",
        "chat_placeholder": "タスクと状況（ラベル付きデータの量、会話が必要か など）を書いて質問してください。",
        "input": "質問",
        "input_placeholder": "例: 感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？",
        "send": "送信",
        "clear": "クリア",
        "keys": "Enter で送信 · Shift+Enter で改行（変換を確定する Enter では送信しません）",
        "keys_short": "Enter で送信 · Shift+Enter で改行",
        "count": "{n} / {limit} 文字",
        "over": "{limit} 文字を超えています。送信すると、冒頭と末尾を残して途中の {cut} 文字を省きます。",
        "empty_hint": "質問を入力してから送信してください。",
        "examples": "質問の例（クリックするとそのまま質問します）",
        "verdict_h": "結論",
        "verdict_empty": "質問すると、ここに結論が表示されます。",
        "flow_h": "意思決定フロー（サーベイの図2）",
        "legend_path": "たどった経路",
        "legend_deciding": "決め手の条件",
        "legend_assumed": "記載なし（いいえ扱い）",
        "sources_h": "出典（回答で引用した箇所）",
        "sources_empty": "回答で引用した箇所がここに表示されます。クリックすると本文が開きます。",
        "sources_none": "この回答には出典がありません。",
        "open": "原文",
        "settings": "設定",
        "generator": "回答の生成",
        "store": "ストア",
        "chunks": "チャンク数",
        "embedding": "埋め込みモデル",
        "max_chars": "質問の最大文字数",
        "error": "申し訳ありません。回答の作成中にエラーが発生しました: {error}",
        "writer": "回答の作成",
        "writer_choices": "組み込み|LLM",
    },
    "en": {
        "header": "## dotchi — an LLM, or a fine-tuned model?\n"
                  "Tell dotchi about your NLP task and it answers whether to use a large language model or to "
                  "fine-tune a smaller one, following Figure 2 of Yang et al. (2023), with citations.",
        "chat": "Chat",
        "chat_placeholder": "Describe your task and situation (how many labels, whether it must converse, ...).",
        "input": "Question",
        "input_placeholder": "e.g. Named entity recognition with 50k labelled sentences: LLM or fine-tuning?",
        "send": "Send",
        "clear": "Clear",
        "keys": "Enter sends · Shift+Enter adds a line (an Enter that confirms an IME conversion never sends)",
        "keys_short": "Enter sends · Shift+Enter: new line",
        "count": "{n} / {limit} characters",
        "over": "Over {limit} characters: when sent, the beginning and the end are kept and {cut} characters in "
                "the middle are left out.",
        "empty_hint": "Type a question first, then press Enter.",
        "examples": "Example questions (click one to ask it)",
        "verdict_h": "Verdict",
        "verdict_empty": "Ask a question and the verdict appears here.",
        "flow_h": "Decision flow (Figure 2 of the survey)",
        "legend_path": "path taken",
        "legend_deciding": "deciding condition",
        "legend_assumed": "not stated (taken as no)",
        "sources_h": "Sources (the passages the answer cites)",
        "sources_empty": "The passages cited by the answer appear here. Click one to read it.",
        "sources_none": "This answer cites no sources.",
        "open": "source",
        "settings": "Settings",
        "generator": "Answer generator",
        "store": "Store",
        "chunks": "Chunks",
        "embedding": "Embedding model",
        "max_chars": "Max question length",
        "error": "Sorry, something went wrong while answering: {error}",
        "writer": "Answer written by",
        "writer_choices": "Built-in|LLM",
    },
}
# Texts of the verdict card (in the UI language) and the notices put before an answer (in the answer's language).
CARD: dict[str, dict[str, str]] = {
    "ja": {"kicker": "結論", "abstain": "対象外の質問", "abstain_note": "dotchi が答えられるのは、NLPタスクに LLM と"
           "ファインチューニングのどちらを使うかという質問です。", "info": "判定なし",
           "info_note": "特定の選択を勧める質問ではなかったため、ナレッジベースの内容をお伝えしました。",
           "task": "タスク", "deciding": "決め手", "step": "ステップ{step}「{name}」",
           "clipped": "⚠️ 質問が{limit}文字を超えたため、冒頭と末尾を残し、途中の{cut}文字を省いて回答しました。",
           "truncated": "⚠️ 質問が長すぎるため、最初の{n}文字だけを使って回答しました。",
           "by_llm": "（LLM が出典に基づいて書いた回答です）",
           "by_template": "（組み込みの回答です）",
           "fell_back": "（LLM の回答は使えませんでした: {reason}。組み込みの回答を表示しています）"},
    "en": {"kicker": "Verdict", "abstain": "Out of scope", "abstain_note": "dotchi answers whether to use an LLM "
           "or a fine-tuned model for an NLP task.", "info": "No verdict",
           "info_note": "The question did not ask for a choice, so dotchi summarised the knowledge base.",
           "task": "Task", "deciding": "Decided at", "step": "step {step}, {name}",
           "clipped": "⚠️ Your question was longer than {limit} characters: its beginning and end were kept and "
                      "{cut} characters in the middle were left out.",
           "truncated": "⚠️ Your question was longer than {n} characters; only the first {n} were used.",
           "by_llm": "(written by the LLM from the cited sources)",
           "by_template": "(the built-in answer)",
           "fell_back": "(the LLM's answer could not be used: {reason}; showing the built-in answer)"},
}

VERDICT_CSS = """
.card { border: 1px solid #cbd5e1; border-left: 6px solid #64748b; border-radius: 10px; padding: 12px 16px;
  background: #f8fafc; color: #0f172a; }
.head { font-size: 0.8rem; font-weight: 600; letter-spacing: .04em; color: #475569; margin-bottom: 4px; }
.label { font-size: 1.35rem; font-weight: 700; line-height: 1.3; }
.note { margin-top: 6px; font-size: 0.9rem; color: #334155; }
.meta { margin-top: 8px; font-size: 0.82rem; color: #475569; display: flex; flex-wrap: wrap; gap: 4px 14px; }
.meta b { color: #0f172a; }
.empty { color: #64748b; font-size: 0.95rem; }
.v-llm { border-left-color: #2563eb; background: #eff6ff; }
.v-llm .label { color: #1d4ed8; }
.v-fine_tuned { border-left-color: #16a34a; background: #f0fdf4; }
.v-fine_tuned .label { color: #15803d; }
.v-neither { border-left-color: #ca8a04; background: #fefce8; }
.v-neither .label { color: #a16207; }
.v-depends { border-left-color: #7c3aed; background: #f5f3ff; }
.v-depends .label { color: #6d28d9; }
.v-abstain .label, .v-info .label { color: #475569; }
"""

FLOW_CSS = f"""
.panel {{ border: 1px solid #e2e8f0; border-radius: 10px; padding: 10px 12px 8px; background: #ffffff; }}
.ptitle {{ font-weight: 600; font-size: 0.95rem; color: #0f172a; margin-bottom: 6px; }}
svg {{ width: 100%; height: auto; display: block; font-family: system-ui, -apple-system, "Segoe UI",
  "Hiragino Sans", "Noto Sans CJK JP", "Noto Sans JP", "IPAGothic", sans-serif; }}
.scroll {{ overflow-x: auto; }}
svg.tall {{ display: none; width: {TALL_W}px; max-width: none; margin: 0 auto; }}
@media (max-width: {PHONE_MAX}px) {{
  svg.wide {{ display: none; }}
  svg.tall {{ display: block; }}
}}
.box {{ fill: #f8fafc; stroke: #cbd5e1; stroke-width: 1.2; }}
.badge {{ fill: #e2e8f0; }}
.badge-t {{ fill: #334155; font-size: 12px; font-weight: 700; text-anchor: middle; }}
.name {{ fill: #1e293b; font-size: 13.5px; }}
.tall .name {{ font-size: 14px; }}
.edge {{ stroke: #94a3b8; stroke-width: 1.4; fill: none; }}
.elabel {{ fill: #64748b; font-size: 12px; font-weight: 700; }}
.outcome {{ stroke-width: 1.2; }}
.otext {{ font-size: 12.5px; font-weight: 600; text-anchor: middle; }}
.tall .otext {{ font-size: 13px; }}
.o-llm {{ fill: #dbeafe; stroke: #93c5fd; }} .ot-llm {{ fill: #1d4ed8; }}
.o-fine_tuned {{ fill: #dcfce7; stroke: #86efac; }} .ot-fine_tuned {{ fill: #15803d; }}
.o-neither {{ fill: #fef9c3; stroke: #fde047; }} .ot-neither {{ fill: #a16207; }}
.o-depends {{ fill: #ede9fe; stroke: #c4b5fd; }} .ot-depends {{ fill: #6d28d9; }}
.has-path .box:not(.on-path), .has-path .outcome:not(.on-path), .has-path .edge:not(.on-path),
.has-path .otext:not(.on-path) {{ opacity: .5; }}
.box.on-path {{ fill: #e0f2fe; stroke: #0284c7; stroke-width: 2; }}
.box.assumed {{ stroke-dasharray: 5 3; }}
.box.deciding {{ fill: #fef3c7; stroke: #d97706; stroke-width: 3; }}
.edge.on-path {{ stroke: #0284c7; stroke-width: 2.6; }}
.elabel.on-path {{ fill: #0369a1; }}
.outcome.on-path {{ stroke: #0f172a; stroke-width: 2.4; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.78rem; color: #475569; margin-top: 4px; }}
.legend i {{ display: inline-block; width: 14px; height: 10px; border-radius: 3px; margin-right: 5px;
  vertical-align: -1px; border: 2px solid; }}
.l-path {{ background: #e0f2fe; border-color: #0284c7 !important; }}
.l-deciding {{ background: #fef3c7; border-color: #d97706 !important; }}
.l-assumed {{ background: #f8fafc; border-style: dashed !important; border-color: #0284c7 !important; }}
"""

SOURCES_CSS = """
.panel { border: 1px solid #e2e8f0; border-radius: 10px; padding: 10px 12px; background: #ffffff; color: #0f172a; }
.ptitle { font-weight: 600; font-size: 0.95rem; margin-bottom: 6px; }
summary.ptitle { cursor: pointer; margin-bottom: 0; }
.sbox[open] > summary.ptitle { margin-bottom: 6px; }
.cnt { display: inline-block; min-width: 1.4em; padding: 0 6px; margin-left: 6px; border-radius: 999px;
  background: #e0f2fe; color: #0369a1; font-size: 0.8rem; text-align: center; }
.empty { color: #64748b; font-size: 0.9rem; }
.source { border-top: 1px solid #f1f5f9; padding: 6px 0; }
.source:first-of-type { border-top: none; }
.source summary { cursor: pointer; font-size: 0.9rem; line-height: 1.45; }
.n { font-weight: 700; color: #0369a1; margin-right: 4px; }
.sec { color: #475569; font-size: 0.82rem; margin-left: 6px; white-space: nowrap; }
.link { margin-left: 8px; font-size: 0.82rem; white-space: nowrap; color: #0369a1; text-decoration: underline; }
.text { white-space: pre-wrap; font-size: 0.86rem; line-height: 1.6; color: #1e293b; background: #f8fafc;
  border-radius: 8px; padding: 8px 10px; margin: 6px 0 2px; max-height: 320px; overflow-y: auto; }
mark { background: #fde68a; color: inherit; padding: 0 1px; border-radius: 2px; }
"""

HINT_CSS = """
.hint { display: flex; flex-wrap: wrap; justify-content: space-between; gap: 2px 12px; font-size: 0.8rem;
  line-height: 1.4; color: #64748b; padding: 0 2px; }
.count { font-variant-numeric: tabular-nums; white-space: nowrap; }
.keys-short { display: none; }
@media (max-width: __PHONE_MAX__px) {
  .keys { display: none; }
  .keys-short { display: inline; }
}
.over, .empty { flex-basis: 100%; font-weight: 600; }
.over { color: #b45309; }
.over:empty { display: none; }
.empty { display: none; color: #b91c1c; }
.is-empty .empty { display: block; }
.is-over .count { color: #b45309; font-weight: 700; }
""".replace("__PHONE_MAX__", str(PHONE_MAX))

# Page-wide layout (the panels' own styles are their css_template). Injected once by INPUT_JS.
PAGE_CSS = f"""
#header h2 {{ margin: 0 0 2px; font-size: 1.3rem; }}
#header p {{ margin: 0; font-size: 0.88rem; }}
#examples .example {{ white-space: normal; text-align: left; justify-content: flex-start; height: auto;
  min-height: 0; line-height: 1.35; padding: 6px 10px; font-weight: 400; overflow: visible; text-overflow: clip; }}
#examples-label p {{ margin: 0; font-size: 0.85rem; color: var(--body-text-color-subdued); }}
@media (max-width: {PHONE_MAX}px) {{
  #header p {{ font-size: 0.8rem; }}
  .gradio-container {{ overflow: clip !important; }}  /* hidden would make it the sticky input's scroller */
  .gradio-container .main.fillable {{ padding-left: 10px !important; padding-right: 10px !important; }}
  #main {{ flex-direction: column !important; flex-wrap: nowrap !important; }}
  #main > #left, #main > #right {{ display: contents; }}
  #verdict-card {{ order: 1; }}
  #chat {{ order: 2; height: 56vh !important; max-height: 56vh; }}
  /* last in the column and sticky: always at the bottom of the screen, wherever the page is scrolled */
  #composer {{ order: 9; position: sticky; bottom: 0; z-index: 20; padding: 6px 0 4px;
    gap: 2px; background: var(--body-background-fill); box-shadow: 0 -8px 10px -10px rgba(15, 23, 42, .45); }}
  #input-row {{ flex-wrap: nowrap !important; gap: 6px; }}
  #input-row > .form {{ min-width: 0 !important; flex: 1 1 auto !important; }}
  #input-row > .column {{ min-width: 76px !important; flex: 0 0 76px !important; gap: 6px; }}
  #input-row button {{ padding: 6px 4px; min-height: 0; height: 100%; }}
  #flow-svg {{ order: 3; }}
  #sources-panel {{ order: 4; }}
  #examples {{ order: 5; }}
  #clear {{ display: none; }}  /* the chat's own clear button (top right) does it */
}}
"""

# Runs once per page (js_on_load of the hint under the text box): page CSS, keys, counter, empty hint, scrolling.
INPUT_JS = """
if (!document.getElementById('dotchi-page-css')) {
  const style = document.createElement('style');
  style.id = 'dotchi-page-css';
  style.textContent = __PAGE_CSS__;
  document.head.appendChild(style);
}
if (!window.dotchiInput) {
  const area = () => document.querySelector('#question textarea');
  const hint = () => document.querySelector('#input-hint .hint');
  const fill = (text, values) => text.replace(/\\{(\\w+)\\}/g, (_, key) => values[key] ?? '');
  const fmt = n => n.toLocaleString('en-US');
  // the length the service counts (bot.text.normalize_question): NFKC, controls as spaces, whitespace collapsed
  const normalize = v => v.normalize('NFKC').replace(/[\\p{Cc}\\p{Cf}\\p{Cs}\\p{Zl}\\p{Zp}]/gu, ' ')
    .replace(/\\s+/g, ' ').trim();
  const state = window.dotchiInput = {composing: false, composedAt: -1e9, sends: 0, answered: 0};
  const update = () => {
    const a = area(), h = hint();
    if (!a || !h) return;
    const n = [...normalize(a.value)].length, limit = +h.dataset.limit, over = n > limit;
    h.querySelector('.count').textContent = fill(h.dataset.count, {n: fmt(n), limit: fmt(limit)});
    const cut = n - (limit - +h.dataset.sep);
    h.querySelector('.over').textContent = over ? fill(h.dataset.over, {limit: fmt(limit), cut: fmt(cut)}) : '';
    h.classList.toggle('is-over', over);
    if (a.value.trim()) h.classList.remove('is-empty');
  };
  const empty = () => { hint()?.classList.add('is-empty'); area()?.focus(); };
  const send = () => {
    if (!area().value.trim()) return empty();
    state.sends += 1;
    document.querySelector('#send').click();
  };
  const ime = e => e.isComposing || e.keyCode === 229 || state.composing ||
                   performance.now() - state.composedAt < 30;
  document.addEventListener('compositionstart', e => {
    if (e.target === area()) state.composing = true;
  }, true);
  document.addEventListener('compositionend', e => {
    if (e.target === area()) { state.composing = false; state.composedAt = performance.now(); }
  }, true);
  document.addEventListener('keydown', e => {
    if (e.target !== area() || e.key !== 'Enter') return;
    e.stopImmediatePropagation();  // Gradio's own Enter handling (Shift+Enter sends) never runs
    if (ime(e) || e.shiftKey) return;  // confirms the conversion / the browser adds a line
    e.preventDefault();
    send();
  }, true);
  document.addEventListener('keypress', e => {
    if (e.target === area() && e.key === 'Enter') e.stopImmediatePropagation();
  }, true);
  document.addEventListener('click', e => {
    if (!e.target.closest?.('#send') || !area() || area().value.trim()) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    empty();
  }, true);
  document.addEventListener('input', e => { if (e.target === area()) update(); }, true);
  setInterval(update, 300);  // also after the text box is cleared by a send or filled by code
  // The chat does not follow the streamed text to its end: a new question is scrolled into view, a new answer's
  // first line to the top, and once the answer is complete (dotchiAfterAnswer) the answer's start again.
  const scroller = () => document.querySelector('#chat .bubble-wrap');
  const rows = kind => scroller()?.querySelectorAll(`.message-row.${kind}-row`) ?? [];
  const toAnswer = () => {
    const box = scroller(), all = rows('bot'), last = all[all.length - 1];
    if (!box || !last) return;
    box.scrollTop += last.getBoundingClientRect().top - box.getBoundingClientRect().top - 8;
  };
  let seen = {user: 0, bot: 0};
  new MutationObserver(() => {
    const now = {user: rows('user').length, bot: rows('bot').length};
    if (now.bot > seen.bot) toAnswer();
    else if (now.user > seen.user && scroller()) scroller().scrollTop = scroller().scrollHeight;
    seen = now;
  }).observe(document.body, {subtree: true, childList: true});
  window.dotchiAfterAnswer = () => {
    state.answered += 1;
    toAnswer();
    const card = document.querySelector('#verdict-card');
    if (card && matchMedia('(max-width: __PHONE_MAX__px)').matches) {
      window.scrollTo({top: Math.max(0, card.getBoundingClientRect().top + window.scrollY - 8)});
    }
  };
  update();
}
""".replace("__PAGE_CSS__", json.dumps(PAGE_CSS)).replace("__PHONE_MAX__", str(PHONE_MAX))
AFTER_ANSWER_JS = "() => { window.dotchiAfterAnswer?.(); }"
# The sources panel folds on a phone (its summary line shows how many passages are cited).
SOURCES_JS = f"""
const fold = () => {{
  const box = element.querySelector('details.sbox');
  if (box && matchMedia('(max-width: {PHONE_MAX}px)').matches) box.open = false;
}};
fold();
watch('value', fold);
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _lang(value: str | None) -> str:
    return value if value in LANGS else "ja"


def _text_width(text: str, size: float) -> float:
    """Rough rendered width of ``text`` in px: wide (CJK) characters 1 em, others about 0.6 em."""
    return sum(size if unicodedata.east_asian_width(ch) in "WF" else size * 0.6 for ch in text)


def _wrap(text: str, size: float, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` (by ``_text_width``): broken at spaces, or anywhere in CJK."""
    tokens = re.findall(r"\S+\s*", text) if " " in text else list(text)
    lines = [""]
    for token in tokens:
        if lines[-1] and _text_width((lines[-1] + token).rstrip(), size) > width:
            lines.append("")
        lines[-1] += token
    return [line.strip() for line in lines]


def _message_text(message: dict) -> str:
    """Plain text of a Chatbot message (Gradio 6 passes content as a list of typed parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "\n".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")


def chat_history(messages: list | None) -> list[dict[str, str]]:
    """Chat messages (Gradio's, with typed content parts, or plain {"role", "content"}) as plain text messages."""
    out = []
    for m in messages or []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
            out.append({"role": m["role"], "content": _message_text(m)})
    return out


# --- panels ------------------------------------------------------------------------------------------------


def render_verdict(flow: DecisionFlow, data: dict | None, ui_lang: str) -> str:
    """The verdict card in the UI language: the outcome label, task and deciding step; an abstention or an
    answer without a choice shows no verdict (``data-verdict=""``)."""
    lang = _lang(ui_lang)
    if not data:
        empty = _esc(UI[lang]["verdict_empty"])
        return f'<div class="card v-empty" lang="{lang}"><div class="empty">{empty}</div></div>'
    text = CARD[lang]
    verdict = None if data.get("abstained") else data.get("verdict")
    meta = []
    if data.get("abstained"):
        cls, label, note = "abstain", text["abstain"], text["abstain_note"]
    elif verdict in flow.outcomes:
        outcome = flow.outcomes[verdict]
        cls, label, note = verdict, outcome.label[lang], outcome.summary[lang]
    else:
        cls, label, note = "info", text["info"], text["info_note"]
    task = next((t for t in flow.tasks if t.id == data.get("task")), None)
    if task is not None and not data.get("abstained"):
        name = task.names[lang][0] if task.names[lang] else task.id
        meta.append(f"<span><b>{_esc(text['task'])}:</b> {_esc(name[:1].upper() + name[1:])}</span>")
    step = data.get("deciding_step")
    cond = next((c for c in flow.conditions if c.step == step), None)
    if cond is not None and verdict:
        where = text["step"].format(step=cond.step, name=cond.name[lang])
        meta.append(f"<span><b>{_esc(text['deciding'])}:</b> {_esc(where)}</span>")
    meta_html = f'<div class="meta">{"".join(meta)}</div>' if meta else ""
    return (f'<div class="card v-{_esc(cls)}" data-verdict="{_esc(verdict or "")}" lang="{lang}">'
            f'<div class="head">{_esc(text["kicker"])}</div><div class="label">{_esc(label)}</div>'
            f'<div class="note">{_esc(note)}</div>{meta_html}</div>')


class _FlowDrawing:
    """SVG parts of Figure 2 with the question's path marked: ``on-path`` boxes, arrows and outcome, the
    deciding condition ``deciding``, conditions taken as "no" for want of a statement ``assumed``."""

    def __init__(self, flow: DecisionFlow, data: dict | None, lang: str, markers: str) -> None:
        self.flow, self.lang, self.markers = flow, lang, markers
        self.path = {p["step"]: p for p in (data or {}).get("flow_path") or []} if data else {}
        self.deciding = (data or {}).get("deciding_step")
        self.labels = {oid: o.label[lang] for oid, o in flow.outcomes.items()}
        self.parts: list[str] = []

    @staticmethod
    def on(flag: bool) -> str:
        return " on-path" if flag else ""

    def taken(self, step: int) -> str | None:
        """"yes"/"no" when the path passes the condition, else None."""
        s = self.path.get(step)
        return None if s is None else ("yes" if s["holds"] is True else "no")

    def box(self, cond, x: float, y: float, w: float, h: float, lines: list[str], line_h: float) -> None:
        step = self.path.get(cond.step)
        cls = "box" + self.on(step is not None) + (" deciding" if cond.step == self.deciding and step else "")
        cls += " assumed" if step is not None and step["holds"] is None else ""
        mid = y + h / 2
        first = mid + 4.5 - (len(lines) - 1) * line_h / 2
        names = "".join(f'<text class="name" x="{x + 40}" y="{first + i * line_h:g}">{_esc(line)}</text>'
                        for i, line in enumerate(lines))
        self.parts.append(f'<g class="cond" data-step="{cond.step}" data-id="{_esc(cond.id)}">'
                          f'<title>{_esc(cond.question[self.lang])}</title>'
                          f'<rect class="{cls}" x="{x}" y="{y}" width="{w}" height="{h}" rx="8"/>'
                          f'<circle class="badge" cx="{x + 20}" cy="{mid}" r="11"/>'
                          f'<text class="badge-t" x="{x + 20}" y="{mid + 4}">{cond.step}</text>{names}</g>')

    def edge(self, x1: float, y1: float, x2: float, y2: float, hit: bool, branch: str, lx: float, ly: float) -> None:
        marker = f"{self.markers}-{'on' if hit else 'off'}"
        self.parts.append(f'<line class="edge{self.on(hit)}" x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" '
                          f'marker-end="url(#{marker})"/><text class="elabel{self.on(hit)}" x="{lx:g}" y="{ly:g}">'
                          f'{"Y" if branch == "yes" else "N"}</text>')

    def pill(self, x: float, y: float, w: float, h: float, oid: str, taken: bool) -> None:
        self.parts.append(f'<rect class="outcome o-{_esc(oid)}{self.on(taken)}" data-outcome="{_esc(oid)}" '
                          f'x="{x:g}" y="{y:g}" width="{w:g}" height="{h}" rx="{h / 2:g}"/>'
                          f'<text class="otext ot-{_esc(oid)}{self.on(taken)}" x="{x + w / 2:g}" '
                          f'y="{y + h / 2 + 4.5:g}">{_esc(self.labels.get(oid, oid))}</text>')

    def svg(self, cls: str, width: float, height: float, title: str) -> str:
        markers = "".join(
            f'<marker id="{self.markers}-{kind}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
            f'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
            for kind, color in (("off", "#94a3b8"), ("on", "#0284c7")))
        cls = f"flow {cls}" + (" has-path" if self.path else "")
        return (f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} {height:g}" '
                f'role="img" aria-label="{_esc(title)}"><defs>{markers}</defs>{"".join(self.parts)}</svg>')

    @staticmethod
    def branches(cond) -> tuple[str | None, str]:
        """(the branch drawn to the side, the branch drawn below) of a condition."""
        branches = {"yes": cond.yes, "no": cond.no}
        ends = [b for b in ("yes", "no") if branches[b] != "next"]
        side = ends[0] if ends else None
        return side, ("no" if side == "yes" else "yes")


def _flow_wide(flow: DecisionFlow, data: dict | None, lang: str, title: str) -> str:
    """Figure 2 for a wide panel: condition boxes top to bottom, Y/N arrows right to the outcome pills."""
    d = _FlowDrawing(flow, data, lang, "dzw")
    bx, bh, pitch = 8, 38, 58
    bw = max(240, max(_text_width(c.name[lang], 13.5) for c in flow.conditions) + 56)
    pw, ph = max(_text_width(t, 12.5) for t in d.labels.values()) + 28, 30
    px = bx + bw + 52
    cx = bx + bw / 2
    y = 6
    for i, cond in enumerate(flow.conditions):
        taken = d.taken(cond.step)
        mid = y + bh / 2
        d.box(cond, bx, y, bw, bh, [cond.name[lang]], 17)
        side, down = d.branches(cond)
        ends = {"yes": cond.yes, "no": cond.no}
        if side is not None:
            d.edge(bx + bw, mid, px - 3, mid, taken == side, side, bx + bw + 24, mid - 6)
            d.pill(px, mid - ph / 2, pw, ph, ends[side], taken == side)
        if ends[down] != "next":  # both branches end the flow: the second outcome goes below the box
            d.edge(cx, y + bh, cx, y + pitch - 3, taken == down, down, cx + 7, y + bh + 15)
            d.pill(cx - pw / 2, y + pitch, pw, ph, ends[down], taken == down)
            y += pitch + ph + 12
        elif i < len(flow.conditions) - 1:
            d.edge(cx, y + bh, cx, y + pitch - 3, taken == down, down, cx + 7, y + bh + 15)
            y += pitch
        else:
            y += bh + 10
    return d.svg("wide", px + pw + 8, y, title)


def _flow_tall(flow: DecisionFlow, data: dict | None, lang: str, title: str) -> str:
    """Figure 2 for a phone, ``TALL_W`` px wide and drawn 1:1: each condition box across the width (long names on
    two lines), its outcome pill below on the right, the way on to the next condition down the left."""
    d = _FlowDrawing(flow, data, lang, "dzt")
    x0, w, line_h, gap = 1, TALL_W - 2, 17, 14
    pw, ph = max(_text_width(t, 13) for t in d.labels.values()) + 28, 28
    trunk = x0 + 20  # the down arrows leave from below the step badge
    y = 2
    for i, cond in enumerate(flow.conditions):
        taken = d.taken(cond.step)
        lines = _wrap(cond.name[lang], 14, w - 50)
        bh = 18 + line_h * len(lines)
        d.box(cond, x0, y, w, bh, lines, line_h)
        side, down = d.branches(cond)
        ends = {"yes": cond.yes, "no": cond.no}
        bottom = y + bh
        next_top = bottom + gap
        if side is not None:
            px = x0 + w - pw
            d.edge(px + pw / 2, bottom, px + pw / 2, next_top - 3, taken == side, side, px + pw / 2 + 7, bottom + 12)
            d.pill(px, next_top, pw, ph, ends[side], taken == side)
            next_top += ph + gap
        if ends[down] != "next":  # both branches end the flow: the second outcome below the first, on the left
            d.edge(trunk, bottom, trunk, next_top - 3, taken == down, down, trunk + 7, bottom + 12)
            d.pill(x0, next_top, pw, ph, ends[down], taken == down)
            y = next_top + ph + 4
        elif i < len(flow.conditions) - 1:
            d.edge(trunk, bottom, trunk, next_top - 3, taken == down, down, trunk + 7, bottom + 12)
            y = next_top
        else:
            y = bottom + 4
    return d.svg("tall", TALL_W, y, title)


def render_flow(flow: DecisionFlow, data: dict | None, ui_lang: str) -> str:
    """Figure 2 as SVG in the UI language, twice: ``svg.wide`` (boxes with outcomes to the right) for a desktop and
    ``svg.tall`` (drawn 1:1, outcomes below each box) shown instead at or below ``PHONE_MAX`` px. An abstention
    shows no path."""
    lang = _lang(ui_lang)
    data = None if not data or data.get("abstained") else data
    text = UI[lang]
    legend = (f'<div class="legend"><span><i class="l-path"></i>{_esc(text["legend_path"])}</span>'
              f'<span><i class="l-deciding"></i>{_esc(text["legend_deciding"])}</span>'
              f'<span><i class="l-assumed"></i>{_esc(text["legend_assumed"])}</span></div>')
    return (f'<div class="panel" lang="{lang}"><div class="ptitle">{_esc(text["flow_h"])}</div>'
            f'{_flow_wide(flow, data, lang, text["flow_h"])}'
            f'<div class="scroll">{_flow_tall(flow, data, lang, text["flow_h"])}</div>{legend}</div>')


def highlight_pattern(question: str) -> re.Pattern[str] | None:
    """A regex matching the question's terms (``bot.text.tokenize``) in chunk text, or None."""
    alternatives = []
    for term in sorted(set(tokenize(question)), key=len, reverse=True):
        if len(term) < 2 or re.fullmatch(r"[\u3040-\u309f]+", term):  # one-letter and all-hiragana terms
            continue
        if term.isascii():
            tail = "" if term.isdigit() else "[a-z]*"
            alternatives.append(rf"(?<![a-z0-9]){re.escape(term)}{tail}(?![a-z0-9])")
        else:
            alternatives.append(re.escape(term))
    return re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None


def highlight(text: str, pattern: re.Pattern[str] | None) -> str:
    """HTML-escaped ``text`` with the pattern's matches (adjacent ones merged) wrapped in <mark>."""
    spans: list[list[int]] = []
    for m in pattern.finditer(text) if pattern is not None else ():
        if m.end() == m.start():
            continue
        if spans and text[spans[-1][1]:m.start()] in ("", "-"):  # "fine-tuned": one mark
            spans[-1][1] = m.end()
        else:
            spans.append([m.start(), m.end()])
    out, last = [], 0
    for start, end in spans:
        out.append(f"{_esc(text[last:start])}<mark>{_esc(text[start:end])}</mark>")
        last = end
    out.append(_esc(text[last:]))
    return "".join(out)


def render_sources(data: dict | None, ui_lang: str) -> str:
    """The cited chunks only, in a panel that folds (``details.sbox``; folded on a phone by ``SOURCES_JS``): [n],
    title, section (page), link, and the chunk text in a ``details.source``. The text marks the citation's
    ``support`` sentence when the service gives one (a substring of ``text``), else the question's terms."""
    text = UI[_lang(ui_lang)]
    citations = (data or {}).get("citations") or []
    count = f'<span class="cnt">{len(citations)}</span>' if citations else ""
    head = (f'<details class="panel sbox" open><summary class="ptitle">{_esc(text["sources_h"])}{count}'
            "</summary>")
    if not data:
        return f'{head}<div class="empty">{_esc(text["sources_empty"])}</div></details>'
    if not citations:
        return f'{head}<div class="empty">{_esc(text["sources_none"])}</div></details>'
    pattern = highlight_pattern(data.get("question") or "")
    items = []
    for c in citations:
        where = f"§{c.get('section')}" if c.get("section") else ""
        if c.get("page") not in (None, ""):
            where += f" · p. {c['page']}"
        url = str(c.get("url") or "")
        link = (f'<a class="link" href="{_esc(url)}" target="_blank" rel="noopener noreferrer">'
                f'{_esc(text["open"])} ↗</a>') if re.match(r"https?://", url) else ""
        body = str(c.get("text", ""))
        support = str(c.get("support") or "").strip()
        at = body.find(support) if support else -1
        if at >= 0:  # the sentence the service says supports the claim, rather than the question's words
            shown = (f'{_esc(body[:at])}<mark class="support">{_esc(support)}</mark>'
                     f"{_esc(body[at + len(support):])}")
        else:
            shown = highlight(body, pattern)
        items.append(f'<details class="source" data-n="{_esc(c.get("n"))}" data-chunk="{_esc(c.get("chunk_id"))}">'
                     f'<summary><span class="n">[{_esc(c.get("n"))}]</span><span class="title">'
                     f'{_esc(c.get("title", ""))}</span><span class="sec">{_esc(where)}</span>{link}</summary>'
                     f'<div class="text" lang="{_esc(c.get("lang", ""))}">{shown}</div></details>')
    return f'{head}{"".join(items)}</details>'


def render_hint(ui_lang: str, limit: int, empty: bool = False) -> str:
    """The line under the text box: which keys send, the character counter (kept current by ``INPUT_JS`` from the
    ``data-*`` templates) and, after an empty send (``empty``), a reminder to type a question."""
    text = UI[_lang(ui_lang)]
    cls = "hint is-empty" if empty else "hint"
    count = text["count"].format(n=0, limit=f"{limit:,}")
    return (f'<div class="{cls}" data-limit="{limit}" data-sep="{CLIP_SEP_LEN}" data-count="{_esc(text["count"])}" '
            f'data-over="{_esc(text["over"])}"><span class="keys">{_esc(text["keys"])}</span>'
            f'<span class="keys-short">{_esc(text["keys_short"])}</span>'
            f'<span class="count" aria-live="polite">{_esc(count)}</span><span class="over" role="status"></span>'
            f'<span class="empty" role="status">{_esc(text["empty_hint"])}</span></div>')


def settings_markdown(settings: Settings, pipeline: Pipeline, ui_lang: str) -> str:
    text = UI[ui_lang]
    rows = [(text["generator"], settings.generator), (text["store"], settings.describe_store()),
            (text["chunks"], str(pipeline.service.chunk_count)), (text["embedding"], settings.embedding_model),
            (text["max_chars"], str(settings.max_question_chars))]
    return "\n".join(f"- **{name}**: `{value}`" for name, value in rows)


def writer_note(answer_lang: str, writer: str, note: str | None) -> str:
    """Which writer answered, and after a fallback, why (shown only when an LLM is configured)."""
    card = CARD[_lang(answer_lang)]
    if note:
        return card["fell_back"].format(reason=note)
    return card["by_llm"] if writer == "llm" else card["by_template"]


# --- app ---------------------------------------------------------------------------------------------------


def build_app(answerer: Pipeline | AnswerService) -> gr.Blocks:
    """The dotchi Blocks app over the answering pipeline (queue already configured: two answers at a time)."""
    pipeline = answerer if isinstance(answerer, Pipeline) else Pipeline(answerer)
    settings, flow = pipeline.service.settings, pipeline.service.flow
    limit = settings.max_question_chars
    has_llm = "llm" in pipeline.writers

    def panels(data: dict | None, lang: str) -> tuple[str, str, str]:
        return render_verdict(flow, data, lang), render_flow(flow, data, lang), render_sources(data, lang)

    def grounded_data(event: AnswerEvent) -> dict:
        """The panels' data before any prose: the grounding's verdict, path and reading, and its numbered
        evidence as the sources (the final answer then lists exactly what it cites)."""
        data = answer_shell(event.grounding).to_json()
        cites = Citations(pipeline.service.sources)
        for chunk in event.grounding.sources:
            cites.cite(chunk)
        data["citations"] = [c.to_json() for c in cites.items]  # the same shape and titles as the final answer's
        return data

    def respond(message: str, history: list[dict], lang: str, writer: str | None = None) -> Iterator[tuple[Any, ...]]:
        """Chat handler: ground the question (over the limit, its beginning and end) with the chat so far as its
        history and show the verdict card, flow and sources at once; then stream the writer's text (an
        abstention clears the panels) and finish with the panels for exactly what the answer cites."""
        lang = _lang(lang)
        history = list(history or [])
        skip = gr.skip()
        message = message if isinstance(message, str) else ""
        if not message.strip():  # nothing in the chat; the hint under the text box says what to do
            yield history, skip, skip, skip, skip, skip, render_hint(lang, limit, empty=True)
            return
        prior = chat_history(history)
        question, cut = clip_question(message, limit)
        history.append({"role": "user", "content": question})
        yield history, "", skip, skip, skip, skip, render_hint(lang, limit)
        name = "llm" if has_llm and writer in ("llm", "LLM") else "template"
        text, pushed = "", 0.0
        try:
            for event in pipeline.stream(question, prior, writer=name):
                if event.kind == "grounded":
                    data = grounded_data(event)
                    history.append({"role": "assistant", "content": ""})
                    yield (history, skip, *panels(None if event.grounding.abstained else data, lang), skip, skip)
                elif event.kind == "delta":
                    text += event.text
                    if time.monotonic() - pushed >= STREAM_EVERY_S:
                        history[-1] = {"role": "assistant", "content": text}
                        pushed = time.monotonic()
                        yield history, skip, skip, skip, skip, skip, skip
                elif event.kind == "reset":
                    text = ""
                elif event.kind == "done" and event.answer is not None:
                    answer = event.answer
        except Exception as exc:  # show the failure in the chat instead of a broken UI
            log.exception("answering failed")
            if history and history[-1]["role"] == "assistant":
                history.pop()
            history.append({"role": "assistant", "content": UI[lang]["error"].format(error=exc)})
            yield history, skip, skip, skip, skip, skip, skip
            return
        data = answer.to_json()
        body = answer.answer
        notice = CARD[_lang(answer.language)]
        if cut:
            body = notice["clipped"].format(limit=f"{limit:,}", cut=f"{cut:,}") + "\n\n" + body
        elif answer.notice == "truncated":
            body = notice["truncated"].format(n=limit) + "\n\n" + body
        if has_llm and not answer.abstained:
            body += "\n\n" + writer_note(answer.language, answer.writer, answer.writer_note)
        history[-1] = {"role": "assistant", "content": body}
        yield (history, skip, *panels(data, lang), data, skip)

    def clear(lang: str) -> tuple[Any, ...]:
        lang = _lang(lang)
        return ([], "", *panels(None, lang), None, render_hint(lang, limit))

    def switch_language(lang: str, data: dict | None) -> tuple[Any, ...]:
        lang = _lang(lang)
        text = UI[lang]
        return (text["header"], gr.update(label=text["chat"], placeholder=text["chat_placeholder"]),
                gr.update(label=text["input"], placeholder=text["input_placeholder"]),
                gr.update(value=text["send"]), gr.update(value=text["clear"]), text["examples"],
                *panels(data, lang), render_hint(lang, limit), gr.update(label=text["settings"]),
                settings_markdown(settings, pipeline, lang), gr.update(label=text["writer"]))

    def ask_api(question: str, history: list[dict] | None = None, writer: str | None = None) -> dict:
        """Answer one question; returns the same JSON object as `python -m bot ask --json`. ``history``: the chat
        so far as messages ({"role": "user"|"assistant", "content": str}), read as in the chat (a follow-up keeps
        the earlier facts; anything else stands alone). ``writer``: "template" or "llm" (default: the LLM when
        one is configured)."""
        return pipeline.ask(question, chat_history(history), writer=writer).to_json()

    text = UI["ja"]
    with gr.Blocks(title="dotchi", analytics_enabled=False) as demo:
        last = gr.State(None)
        with gr.Row(equal_height=False, elem_id="top"):
            with gr.Column(scale=5):
                header = gr.Markdown(text["header"], elem_id="header")
            with gr.Column(scale=1, min_width=250):
                lang = gr.Radio([("日本語", "ja"), ("English", "en")], value="ja", label="表示言語 / Language",
                                elem_id="ui-lang")
        with gr.Row(equal_height=False, elem_id="main"):
            with gr.Column(scale=5, elem_id="left"):
                chatbot = gr.Chatbot(label=text["chat"], placeholder=text["chat_placeholder"],
                                     height="calc(100vh - 330px)", min_height=300, autoscroll=False,
                                     elem_id="chat", buttons=["copy"], feedback_options=None, show_label=False)
                with gr.Column(elem_id="composer"):
                    with gr.Row(equal_height=True, elem_id="input-row"):
                        box = gr.Textbox(label=text["input"], placeholder=text["input_placeholder"], lines=2,
                                         max_lines=6, scale=6, elem_id="question", show_label=False)
                        with gr.Column(scale=1, min_width=100):
                            send = gr.Button(text["send"], variant="primary", elem_id="send")
                            clear_btn = gr.Button(text["clear"], variant="secondary", elem_id="clear")
                    hint = gr.HTML(render_hint("ja", limit), elem_id="input-hint", css_template=HINT_CSS,
                                   js_on_load=INPUT_JS, apply_default_css=False)
                    built_in, llm_label = text["writer_choices"].split("|")
                    writer = gr.Radio([(built_in, "template"), (llm_label, "llm")],
                                      value=pipeline.default_writer, label=text["writer"], visible=has_llm,
                                      elem_id="writer")
                with gr.Column(elem_id="examples"):
                    examples_label = gr.Markdown(text["examples"], elem_id="examples-label")
                    with gr.Row():
                        example_buttons = []
                        for group in (EXAMPLES[:3], EXAMPLES[3:]):
                            with gr.Column(min_width=260):
                                example_buttons += [gr.Button(q, size="sm", variant="secondary",
                                                              elem_classes=["example"]) for q in group]
            with gr.Column(scale=4, min_width=380, elem_id="right"):
                verdict = gr.HTML(render_verdict(flow, None, "ja"), elem_id="verdict-card",
                                  css_template=VERDICT_CSS, js_on_load=None, apply_default_css=False)
                figure = gr.HTML(render_flow(flow, None, "ja"), elem_id="flow-svg", css_template=FLOW_CSS,
                                 js_on_load=None, apply_default_css=False)
                sources = gr.HTML(render_sources(None, "ja"), elem_id="sources-panel", css_template=SOURCES_CSS,
                                  js_on_load=SOURCES_JS, apply_default_css=False)
        with gr.Accordion(text["settings"], open=False, elem_id="settings") as accordion:
            settings_md = gr.Markdown(settings_markdown(settings, pipeline, "ja"))

        outputs = [chatbot, box, verdict, figure, sources, last, hint]
        gr.on([box.submit, send.click], respond, inputs=[box, chatbot, lang, writer], outputs=outputs,
              api_name="chat", concurrency_id="answer", show_progress="hidden").then(None, js=AFTER_ANSWER_JS)
        for button in example_buttons:  # an example is asked as it is
            button.click(respond, inputs=[button, chatbot, lang, writer], outputs=outputs,
                         api_visibility="undocumented", concurrency_id="answer",
                         show_progress="hidden").then(None, js=AFTER_ANSWER_JS)
        clear_btn.click(clear, inputs=[lang], outputs=outputs, api_visibility="undocumented", queue=False)
        chatbot.clear(clear, inputs=[lang], outputs=outputs, api_visibility="undocumented", queue=False)
        lang.change(switch_language, inputs=[lang, last],
                    outputs=[header, chatbot, box, send, clear_btn, examples_label, verdict, figure, sources, hint,
                             accordion, settings_md, writer], api_visibility="undocumented", queue=False)
        gr.api(ask_api, api_name="ask", concurrency_id="answer")
    demo.queue(default_concurrency_limit=2)
    return demo


def _auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("DOTCHI_UI_AUTH must look like 'user:password'")
    return user, password


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Load the answering pipeline once and serve the UI (blocks until interrupted)."""
    pipeline = Pipeline.from_settings(settings)
    if pipeline.service.chunk_count == 0:
        print("dotchi: the store is empty; run `make ingest` (or `python -m ingest`) first.", flush=True)
    pipeline.service.warm_up()
    app = build_app(pipeline)
    app.launch(server_name=host or settings.host, server_port=port or settings.port, auth=_auth(settings.ui_auth),
               prevent_thread_lock=True, quiet=True, show_error=True)
    print(f"dotchi UI running at {app.local_url}", flush=True)
    app.block_thread()  # returns on Ctrl-C after closing the server
