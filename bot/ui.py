"""Gradio 6 chat UI for dotchi: streamed chat, verdict card, Figure 2 drawn as SVG, cited sources, JSON API.

``build_app(service)`` returns the Blocks app; ``serve(settings)`` loads the answering service once and launches it.
Every string that comes from the store or the user is HTML-escaped before it reaches an HTML panel.
"""

from __future__ import annotations

import html
import inspect
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere

import gradio as gr  # noqa: E402

from bot.compose import T as ANSWER_TEXT  # noqa: E402
from bot.knowledge import DecisionFlow  # noqa: E402
from bot.service import Answer, AnswerService  # noqa: E402
from bot.text import tokenize  # noqa: E402
from ingest.config import Settings  # noqa: E402

log = logging.getLogger(__name__)

LANGS = ("ja", "en")
STREAM_DELAY_S = 0.015  # pause between streamed lines, so the answer visibly builds up
BUBBLE_CHARS = 400  # a longer question is shown shortened in the chat (the service still gets all of it)
EXAMPLES = (
    "感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？",
    "社内の問い合わせに答えるチャットボットを作りたい。LLMとファインチューニング、どっち？",
    "ラベル付きデータが30件しかない文書分類には、LLMとファインチューニングのどっちが向いている？",
    "Named entity recognition with 50k labelled sentences: LLM or fine-tuning?",
    "We need to solve math word problems step by step. Should we use an LLM or fine-tune a model?",
    "Predicting a similarity score between two sentences (regression): LLM or a fine-tuned model?",
)

# UI chrome, switched by the language radio. Answer content (verdict, flow, sources) follows the answer's language.
UI: dict[str, dict[str, str]] = {
    "ja": {
        "header": "# dotchi — LLM？ それともファインチューニング？\n"
                  "NLPタスクに大規模言語モデル（LLM）を使うか、小さなモデルをファインチューニングするかを、"
                  "Yang ら（2023）のサーベイの図2に沿って、出典付きでお答えします。",
        "chat": "チャット",
        "chat_placeholder": "タスクと状況（ラベル付きデータの量、会話が必要か など）を書いて質問してください。",
        "input": "質問",
        "input_placeholder": "例: 感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？",
        "send": "送信",
        "clear": "クリア",
        "examples": "質問の例（日本語・英語）",
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
    },
    "en": {
        "header": "# dotchi — an LLM, or a fine-tuned model?\n"
                  "Tell dotchi about your NLP task and it answers whether to use a large language model or to "
                  "fine-tune a smaller one, following Figure 2 of Yang et al. (2023), with citations.",
        "chat": "Chat",
        "chat_placeholder": "Describe your task and situation (how many labels, whether it must converse, ...).",
        "input": "Question",
        "input_placeholder": "e.g. Named entity recognition with 50k labelled sentences: LLM or fine-tuning?",
        "send": "Send",
        "clear": "Clear",
        "examples": "Example questions (Japanese and English)",
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
    },
}
# Texts inside the answer panels, in the answer's language.
CARD: dict[str, dict[str, str]] = {
    "ja": {"kicker": "結論", "abstain": "対象外の質問", "abstain_note": "dotchi が答えられるのは、NLPタスクに LLM と"
           "ファインチューニングのどちらを使うかという質問です。", "info": "判定なし",
           "info_note": "特定の選択を勧める質問ではなかったため、ナレッジベースの内容をお伝えしました。",
           "task": "タスク", "deciding": "決め手", "step": "ステップ{step}「{name}」",
           "truncated": "⚠️ 質問が長すぎるため、最初の{n}文字だけを使って回答しました。"},
    "en": {"kicker": "Verdict", "abstain": "Out of scope", "abstain_note": "dotchi answers whether to use an LLM "
           "or a fine-tuned model for an NLP task.", "info": "No verdict",
           "info_note": "The question did not ask for a choice, so dotchi summarised the knowledge base.",
           "task": "Task", "deciding": "Decided at", "step": "step {step}, {name}",
           "truncated": "⚠️ Your question was longer than {n} characters; only the first {n} were used."},
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

FLOW_CSS = """
.panel { border: 1px solid #e2e8f0; border-radius: 10px; padding: 10px 12px 8px; background: #ffffff; }
.ptitle { font-weight: 600; font-size: 0.95rem; color: #0f172a; margin-bottom: 6px; }
svg { width: 100%; height: auto; display: block; font-family: system-ui, -apple-system, "Segoe UI",
  "Hiragino Sans", "Noto Sans CJK JP", "Noto Sans JP", sans-serif; }
.box { fill: #f8fafc; stroke: #cbd5e1; stroke-width: 1.2; }
.badge { fill: #e2e8f0; }
.badge-t { fill: #334155; font-size: 12px; font-weight: 700; text-anchor: middle; }
.name { fill: #1e293b; font-size: 13.5px; }
.edge { stroke: #94a3b8; stroke-width: 1.4; fill: none; }
.elabel { fill: #64748b; font-size: 12px; font-weight: 700; }
.outcome { stroke-width: 1.2; }
.otext { font-size: 12.5px; font-weight: 600; text-anchor: middle; }
.o-llm { fill: #dbeafe; stroke: #93c5fd; } .ot-llm { fill: #1d4ed8; }
.o-fine_tuned { fill: #dcfce7; stroke: #86efac; } .ot-fine_tuned { fill: #15803d; }
.o-neither { fill: #fef9c3; stroke: #fde047; } .ot-neither { fill: #a16207; }
.o-depends { fill: #ede9fe; stroke: #c4b5fd; } .ot-depends { fill: #6d28d9; }
.has-path .box:not(.on-path), .has-path .outcome:not(.on-path), .has-path .edge:not(.on-path),
.has-path .otext:not(.on-path) { opacity: .5; }
.box.on-path { fill: #e0f2fe; stroke: #0284c7; stroke-width: 2; }
.box.assumed { stroke-dasharray: 5 3; }
.box.deciding { fill: #fef3c7; stroke: #d97706; stroke-width: 3; }
.edge.on-path { stroke: #0284c7; stroke-width: 2.6; }
.elabel.on-path { fill: #0369a1; }
.outcome.on-path { stroke: #0f172a; stroke-width: 2.4; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.78rem; color: #475569; margin-top: 4px; }
.legend i { display: inline-block; width: 14px; height: 10px; border-radius: 3px; margin-right: 5px;
  vertical-align: -1px; border: 2px solid; }
.l-path { background: #e0f2fe; border-color: #0284c7 !important; }
.l-deciding { background: #fef3c7; border-color: #d97706 !important; }
.l-assumed { background: #f8fafc; border-style: dashed !important; border-color: #0284c7 !important; }
"""

SOURCES_CSS = """
.panel { border: 1px solid #e2e8f0; border-radius: 10px; padding: 10px 12px; background: #ffffff; color: #0f172a; }
.ptitle { font-weight: 600; font-size: 0.95rem; margin-bottom: 6px; }
.empty { color: #64748b; font-size: 0.9rem; }
details { border-top: 1px solid #f1f5f9; padding: 6px 0; }
details:first-of-type { border-top: none; }
summary { cursor: pointer; font-size: 0.9rem; line-height: 1.45; }
.n { font-weight: 700; color: #0369a1; margin-right: 4px; }
.sec { color: #475569; font-size: 0.82rem; margin-left: 6px; white-space: nowrap; }
.link { margin-left: 8px; font-size: 0.82rem; white-space: nowrap; color: #0369a1; text-decoration: underline; }
.text { white-space: pre-wrap; font-size: 0.86rem; line-height: 1.6; color: #1e293b; background: #f8fafc;
  border-radius: 8px; padding: 8px 10px; margin: 6px 0 2px; max-height: 320px; overflow-y: auto; }
mark { background: #fde68a; color: inherit; padding: 0 1px; border-radius: 2px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _lang(value: str | None) -> str:
    return value if value in LANGS else "ja"


def _text_width(text: str, size: float) -> float:
    """Rough rendered width of ``text`` in px: wide (CJK) characters 1 em, others about 0.6 em."""
    return sum(size if unicodedata.east_asian_width(ch) in "WF" else size * 0.6 for ch in text)


def _message_text(message: dict) -> str:
    """Plain text of a Chatbot message (Gradio 6 passes content as a list of typed parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "\n".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")


# --- panels ------------------------------------------------------------------------------------------------


def render_verdict(flow: DecisionFlow, data: dict | None, ui_lang: str) -> str:
    """The verdict card: the outcome label in the answer's language, with task and deciding step."""
    if not data:
        return f'<div class="card v-empty"><div class="empty">{_esc(UI[ui_lang]["verdict_empty"])}</div></div>'
    lang = _lang(data.get("language"))
    text = CARD[lang]
    verdict = data.get("verdict")
    meta = []
    if data.get("abstained"):
        cls, label, note = "abstain", text["abstain"], text["abstain_note"]
    elif verdict in flow.outcomes:
        outcome = flow.outcomes[verdict]
        cls, label, note = verdict, outcome.label[lang], outcome.summary[lang]
    else:
        cls, label, note = "info", text["info"], text["info_note"]
    task = next((t for t in flow.tasks if t.id == data.get("task")), None)
    if task is not None:
        name = task.names[lang][0] if task.names[lang] else task.id
        meta.append(f"<span><b>{_esc(text['task'])}:</b> {_esc(name[:1].upper() + name[1:])}</span>")
    step = data.get("deciding_step")
    cond = next((c for c in flow.conditions if c.step == step), None)
    if cond is not None:
        where = text["step"].format(step=cond.step, name=cond.name[lang])
        meta.append(f"<span><b>{_esc(text['deciding'])}:</b> {_esc(where)}</span>")
    meta_html = f'<div class="meta">{"".join(meta)}</div>' if meta else ""
    return (f'<div class="card v-{_esc(cls)}" data-verdict="{_esc(verdict or "")}" lang="{lang}">'
            f'<div class="head">{_esc(text["kicker"])}</div><div class="label">{_esc(label)}</div>'
            f'<div class="note">{_esc(note)}</div>{meta_html}</div>')


def render_flow(flow: DecisionFlow, data: dict | None, ui_lang: str) -> str:
    """Figure 2 as SVG: condition boxes top to bottom, Y/N arrows to outcome pills; the question's path is
    marked ``on-path`` (boxes, arrows, outcome) and the deciding condition ``deciding``."""
    lang = _lang(data.get("language")) if data and not data.get("abstained") else ui_lang
    path = {p["step"]: p for p in (data or {}).get("flow_path") or []}
    deciding = (data or {}).get("deciding_step")
    labels = {oid: o.label[lang] for oid, o in flow.outcomes.items()}
    bx, bw, bh, pitch = 8, 330, 38, 58
    pw, ph = max(_text_width(t, 12.5) for t in labels.values()) + 28, 30
    px = bx + bw + 52
    width = px + pw + 8
    cx = bx + bw / 2
    parts: list[str] = []
    y = 6

    def on(flag: bool) -> str:
        return " on-path" if flag else ""

    def pill(x: float, top: float, oid: str, taken: bool) -> None:
        parts.append(f'<rect class="outcome o-{_esc(oid)}{on(taken)}" data-outcome="{_esc(oid)}" x="{x}" '
                     f'y="{top}" width="{pw}" height="{ph}" rx="15"/>'
                     f'<text class="otext ot-{_esc(oid)}{on(taken)}" x="{x + pw / 2}" y="{top + ph / 2 + 4.5}">'
                     f"{_esc(labels.get(oid, oid))}</text>")

    conditions = flow.conditions
    for i, cond in enumerate(conditions):
        step = path.get(cond.step)
        taken = None if step is None else ("yes" if step["holds"] is True else "no")
        cls = "box" + on(step is not None) + (" deciding" if cond.step == deciding and step else "")
        cls += " assumed" if step is not None and step["holds"] is None else ""
        mid = y + bh / 2
        parts.append(f'<g class="cond" data-step="{cond.step}" data-id="{_esc(cond.id)}">'
                     f'<title>{_esc(cond.question[lang])}</title>'
                     f'<rect class="{cls}" x="{bx}" y="{y}" width="{bw}" height="{bh}" rx="8"/>'
                     f'<circle class="badge" cx="{bx + 20}" cy="{mid}" r="11"/>'
                     f'<text class="badge-t" x="{bx + 20}" y="{mid + 4}">{cond.step}</text>'
                     f'<text class="name" x="{bx + 40}" y="{mid + 4.5}">{_esc(cond.name[lang])}</text></g>')
        branches = {"yes": cond.yes, "no": cond.no}
        outcome_branches = [b for b in ("yes", "no") if branches[b] != "next"]
        right = outcome_branches[0] if outcome_branches else None
        down = "no" if right == "yes" else "yes"
        if right is not None:
            hit = taken == right
            parts.append(f'<line class="edge{on(hit)}" x1="{bx + bw}" y1="{mid}" x2="{px - 3}" y2="{mid}" '
                         f'marker-end="url(#{"dz-on" if hit else "dz-off"})"/>'
                         f'<text class="elabel{on(hit)}" x="{bx + bw + 24}" y="{mid - 6}">'
                         f'{"Y" if right == "yes" else "N"}</text>')
            pill(px, mid - ph / 2, branches[right], hit)
        hit = taken == down
        label = "Y" if down == "yes" else "N"
        if branches[down] != "next":  # both branches end the flow: the second outcome goes below the box
            parts.append(f'<line class="edge{on(hit)}" x1="{cx}" y1="{y + bh}" x2="{cx}" y2="{y + pitch - 3}" '
                         f'marker-end="url(#{"dz-on" if hit else "dz-off"})"/>'
                         f'<text class="elabel{on(hit)}" x="{cx + 7}" y="{y + bh + 15}">{label}</text>')
            pill(cx - pw / 2, y + pitch, branches[down], hit)
            y += pitch + ph + 12
        elif i < len(conditions) - 1:
            parts.append(f'<line class="edge{on(hit)}" x1="{cx}" y1="{y + bh}" x2="{cx}" y2="{y + pitch - 3}" '
                         f'marker-end="url(#{"dz-on" if hit else "dz-off"})"/>'
                         f'<text class="elabel{on(hit)}" x="{cx + 7}" y="{y + bh + 15}">{label}</text>')
            y += pitch
        else:
            y += bh + 10
    markers = "".join(
        f'<marker id="{mid_}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" '
        f'markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        for mid_, color in (("dz-off", "#94a3b8"), ("dz-on", "#0284c7")))
    text = UI[ui_lang]
    svg_cls = "flow has-path" if path else "flow"
    svg = (f'<svg class="{svg_cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {y}" role="img" '
           f'aria-label="{_esc(text["flow_h"])}"><defs>{markers}</defs>{"".join(parts)}</svg>')
    legend = (f'<div class="legend"><span><i class="l-path"></i>{_esc(text["legend_path"])}</span>'
              f'<span><i class="l-deciding"></i>{_esc(text["legend_deciding"])}</span>'
              f'<span><i class="l-assumed"></i>{_esc(text["legend_assumed"])}</span></div>')
    return f'<div class="panel"><div class="ptitle">{_esc(text["flow_h"])}</div>{svg}{legend}</div>'


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
    """The cited chunks only: [n], title, section (page), link, and the chunk text in a <details>."""
    text = UI[ui_lang]
    head = f'<div class="panel"><div class="ptitle">{_esc(text["sources_h"])}</div>'
    if not data:
        return f'{head}<div class="empty">{_esc(text["sources_empty"])}</div></div>'
    citations = data.get("citations") or []
    if not citations:
        return f'{head}<div class="empty">{_esc(text["sources_none"])}</div></div>'
    pattern = highlight_pattern(data.get("question") or "")
    items = []
    for c in citations:
        where = f"§{c.get('section')}" if c.get("section") else ""
        if c.get("page") not in (None, ""):
            where += f" · p. {c['page']}"
        url = str(c.get("url") or "")
        link = (f'<a class="link" href="{_esc(url)}" target="_blank" rel="noopener noreferrer">'
                f'{_esc(text["open"])} ↗</a>') if re.match(r"https?://", url) else ""
        items.append(f'<details class="source" data-n="{_esc(c.get("n"))}" data-chunk="{_esc(c.get("chunk_id"))}">'
                     f'<summary><span class="n">[{_esc(c.get("n"))}]</span><span class="title">'
                     f'{_esc(c.get("title", ""))}</span><span class="sec">{_esc(where)}</span>{link}</summary>'
                     f'<div class="text" lang="{_esc(c.get("lang", ""))}">{highlight(str(c.get("text", "")), pattern)}'
                     f"</div></details>")
    return f'{head}{"".join(items)}</div>'


def settings_markdown(settings: Settings, service: AnswerService, ui_lang: str) -> str:
    text = UI[ui_lang]
    rows = [(text["generator"], settings.generator), (text["store"], settings.describe_store()),
            (text["chunks"], str(service.chunk_count)), (text["embedding"], settings.embedding_model),
            (text["max_chars"], str(settings.max_question_chars))]
    return "\n".join(f"- **{name}**: `{value}`" for name, value in rows)


# --- app ---------------------------------------------------------------------------------------------------


def _asker(service: AnswerService) -> Callable[[str, list[dict[str, str]]], Answer]:
    """``ask(question, history)``: passes the chat history when the service's ``ask`` accepts ``history``."""
    try:
        takes_history = "history" in inspect.signature(service.ask).parameters
    except (TypeError, ValueError):
        takes_history = False

    def ask(question: str, history: list[dict[str, str]]) -> Answer:
        return service.ask(question, history=history) if takes_history else service.ask(question)

    return ask


def build_app(service: AnswerService) -> gr.Blocks:
    """The dotchi Blocks app (queue already configured: two answers at a time)."""
    settings, flow = service.settings, service.flow
    ask = _asker(service)
    limit = settings.max_question_chars

    def panels(data: dict | None, lang: str) -> tuple[str, str, str]:
        return render_verdict(flow, data, lang), render_flow(flow, data, lang), render_sources(data, lang)

    def respond(message: str, history: list[dict], lang: str) -> Iterator[tuple[Any, ...]]:
        """Chat handler: answer the question and stream it line by line, then refresh the panels."""
        lang = _lang(lang)
        history = list(history or [])
        skip = gr.skip()
        message = message if isinstance(message, str) else ""
        if not message.strip():
            history.append({"role": "assistant", "content": ANSWER_TEXT[lang]["empty"]})
            yield history, "", skip, skip, skip, skip
            return
        prior = [{"role": m.get("role", ""), "content": _message_text(m)} for m in history]
        shown = message if len(message) <= BUBBLE_CHARS else f"{message[:BUBBLE_CHARS]} … ({len(message):,})"
        history.append({"role": "user", "content": shown})
        yield history, "", skip, skip, skip, skip
        try:
            answer = ask(message, prior)
        except Exception as exc:  # show the failure in the chat instead of a broken UI
            log.exception("answering failed")
            history.append({"role": "assistant", "content": UI[lang]["error"].format(error=exc)})
            yield history, skip, skip, skip, skip, skip
            return
        data = answer.to_json()
        body = answer.answer
        if answer.notice == "truncated":
            body = CARD[_lang(answer.language)]["truncated"].format(n=limit) + "\n\n" + body
        lines = body.split("\n")
        history.append({"role": "assistant", "content": ""})
        for i in range(len(lines)):
            history[-1] = {"role": "assistant", "content": "\n".join(lines[: i + 1])}
            if i < len(lines) - 1:
                if lines[i].strip():
                    yield history, skip, skip, skip, skip, skip
                    time.sleep(STREAM_DELAY_S)
                continue
            yield (history, skip, *panels(data, lang), data)

    def clear(lang: str) -> tuple[Any, ...]:
        return ([], "", *panels(None, _lang(lang)), None)

    def switch_language(lang: str, data: dict | None) -> tuple[Any, ...]:
        lang = _lang(lang)
        text = UI[lang]
        return (text["header"], gr.update(label=text["chat"], placeholder=text["chat_placeholder"]),
                gr.update(label=text["input"], placeholder=text["input_placeholder"]),
                gr.update(value=text["send"]), gr.update(value=text["clear"]), gr.update(label=text["examples"]),
                *panels(data, lang), gr.update(label=text["settings"]), settings_markdown(settings, service, lang))

    def ask_api(question: str) -> dict:
        """Answer one question; returns the same JSON object as `python -m bot ask --json`."""
        return service.ask(question).to_json()

    text = UI["ja"]
    with gr.Blocks(title="dotchi", analytics_enabled=False) as demo:
        last = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                header = gr.Markdown(text["header"], elem_id="header")
            with gr.Column(scale=1, min_width=200):
                lang = gr.Radio([("日本語", "ja"), ("English", "en")], value="ja", label="表示言語 / Language",
                                elem_id="ui-lang")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                chatbot = gr.Chatbot(label=text["chat"], placeholder=text["chat_placeholder"], height=720,
                                     elem_id="chat", buttons=["copy"], feedback_options=None,
                                     show_label=False)
                with gr.Row(equal_height=True):
                    box = gr.Textbox(label=text["input"], placeholder=text["input_placeholder"], lines=2,
                                     max_lines=8, scale=6, elem_id="question")
                    with gr.Column(scale=1, min_width=110):
                        send = gr.Button(text["send"], variant="primary", elem_id="send")
                        clear_btn = gr.Button(text["clear"], variant="secondary", elem_id="clear")
                examples = gr.Examples([[q] for q in EXAMPLES], inputs=[box], label=text["examples"],
                                       examples_per_page=len(EXAMPLES))
            with gr.Column(scale=4, min_width=380):
                verdict = gr.HTML(render_verdict(flow, None, "ja"), elem_id="verdict-card",
                                  css_template=VERDICT_CSS, js_on_load=None, apply_default_css=False)
                figure = gr.HTML(render_flow(flow, None, "ja"), elem_id="flow-svg", css_template=FLOW_CSS,
                                 js_on_load=None, apply_default_css=False)
                sources = gr.HTML(render_sources(None, "ja"), elem_id="sources-panel", css_template=SOURCES_CSS,
                                  js_on_load=None, apply_default_css=False)
        with gr.Accordion(text["settings"], open=False, elem_id="settings") as accordion:
            settings_md = gr.Markdown(settings_markdown(settings, service, "ja"))

        outputs = [chatbot, box, verdict, figure, sources, last]
        gr.on([box.submit, send.click], respond, inputs=[box, chatbot, lang], outputs=outputs, api_name="chat",
              concurrency_id="answer", show_progress="hidden")
        clear_btn.click(clear, inputs=[lang], outputs=outputs, api_visibility="undocumented", queue=False)
        chatbot.clear(clear, inputs=[lang], outputs=outputs, api_visibility="undocumented", queue=False)
        lang.change(switch_language, inputs=[lang, last],
                    outputs=[header, chatbot, box, send, clear_btn, examples.dataset, verdict, figure, sources,
                             accordion, settings_md], api_visibility="undocumented", queue=False)
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
    """Load the answering service once and serve the UI (blocks until interrupted)."""
    service = AnswerService(settings)
    if service.chunk_count == 0:
        print("dotchi: the store is empty; run `make ingest` (or `python -m ingest`) first.", flush=True)
    app = build_app(service)
    app.launch(server_name=host or settings.host, server_port=port or settings.port, auth=_auth(settings.ui_auth),
               prevent_thread_lock=True, quiet=True, show_error=True)
    print(f"dotchi UI running at {app.local_url}", flush=True)
    app.block_thread()  # returns on Ctrl-C after closing the server
