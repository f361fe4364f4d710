"""The default answer composer (no LLM): verdict, reasons with [n] citations, flow path, caveats, what would
change the verdict, and sources — in Japanese or English. Templates are module constants."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

from bot.engine import ConditionState, Decision
from bot.knowledge import ContentAsks, DecisionFlow, Source
from bot.text import tokenize
from ingest.chunking import weighted_len
from ingest.store import StoredChunk
from ingest.text import CJK, HAN_RANGES, KANA_RANGES

T = {
    "en": {
        "verdict": "**Verdict: {label}**",
        "depends_intro": "The survey points both ways for this case:",
        "why": "**Why**",
        "task": "Your task looks like **{name}**. {finding}",
        "cond_yes": "Step {step} of Figure 2, *{name}*: yes{because}. {description}",
        "cond_no": "Step {step} of Figure 2, *{name}*: no{because}. So this branch does not decide it.",
        "because_cue": " (you mention “{evidence}”)",
        "because_labels": " (about {evidence:,} labelled examples)",
        "because_task": " (typical of this task)",
        "because_implied": " (your answer to a later step presupposes it)",
        "because_learned": " (read from “{evidence}”)",
        "other_side": "On the other hand, your task looks like **{name}**, and the survey's finding for it, measured "
        "in another setting, favours **{label}**: {finding}",
        "cond_next": "Step {step} of Figure 2, *{name}*: yes{because}, so the flow goes on to the next step.",
        "because_multi": " (you list {evidence} different tasks)",
        "common_nlu": "Step {step} of Figure 2, *{name}*: no. Common NLU/NLG tasks that are not knowledge-intensive "
        "go to fine-tuned models.",
        "side_task": "The survey's finding for {name} favours: **{label}**.",
        "side_flow": "Walking Figure 2 with what you told me ends at step {step} (*{name}*) with: **{label}**.",
        "side_cons": "{note} This favours: **{label}**.",
        "unknown": "Your question does not say enough to walk the flow. The first open question is step {step}: "
        "{question}",
        "path": "**Path through the survey's decision flow (Figure 2)**",
        "path_item": "{step}. {name}: {answer}",
        "answers": {True: "yes", False: "no", None: "not stated (taken as no)"},
        "outcome": "→ {label}",
        "caveats": "**Caveats**",
        "flips": "**What would change this**",
        "flip": "If “{question}” were answered *{answer}* → {label} (step {step})",
        "sources": "**Sources**",
        "content_intro": "Here is what the knowledge base says:",
        "abstain": "Sorry — that question is outside what dotchi knows. dotchi answers whether to use an LLM or a "
        "fine-tuned smaller model for an NLP task, based on Yang et al. (2023), *Harnessing the Power of "
        "LLMs in Practice*. Try describing your task, e.g. “sentiment analysis with 200k labels: LLM or "
        "fine-tuning?”",
        "empty": "Please type a question, e.g. “NER with 50k labelled sentences: LLM or fine-tuning?”",
        "section": "§{section}",
    },
    "ja": {
        "verdict": "**結論: {label}**",
        "depends_intro": "このケースでは、サーベイの根拠が両方向を指しています。",
        "why": "**理由**",
        "task": "ご質問のタスクは **{name}** にあたります。{finding}",
        "cond_yes": "図2のステップ{step}「{name}」: はい{because}。{description}",
        "cond_no": "図2のステップ{step}「{name}」: いいえ{because}。この分岐では決まりません。",
        "because_cue": "（「{evidence}」とあるため）",
        "because_labels": "（ラベル付きデータ約{evidence:,}件）",
        "because_task": "（このタスクの性質から）",
        "because_implied": "（後のステップへの答えがこれを前提とするため）",
        "because_learned": "（「{evidence}」から読み取りました）",
        "other_side": "一方で、ご質問のタスクは **{name}** にあたり、別の条件で測られたサーベイの結論は"
        "「**{label}**」です: {finding}",
        "cond_next": "図2のステップ{step}「{name}」: はい{because}。フローは次のステップへ進みます。",
        "because_multi": "（{evidence}種類のタスクが挙がっているため）",
        "common_nlu": "図2のステップ{step}「{name}」: いいえ。知識集約型でない一般的なNLU/NLGタスクは、"
        "ファインチューニングしたモデルが向いています。",
        "side_task": "{name}についてのサーベイの結論は「**{label}**」です。",
        "side_flow": "いただいた条件で図2をたどると、ステップ{step}「{name}」で「**{label}**」になります。",
        "side_cons": "{note} この点からは「**{label}**」です。",
        "unknown": "ご質問の内容だけではフローをたどれません。まずステップ{step}について教えてください: {question}",
        "path": "**サーベイの意思決定フロー（図2）でたどった経路**",
        "path_item": "{step}. {name}: {answer}",
        "answers": {True: "はい", False: "いいえ", None: "記載なし（いいえとして扱う）"},
        "outcome": "→ {label}",
        "caveats": "**注意点**",
        "flips": "**結論が変わる条件**",
        "flip": "「{question}」が「{answer}」なら → {label}（ステップ{step}）",
        "sources": "**出典**",
        "content_intro": "ナレッジベースの該当箇所です。",
        "abstain": "申し訳ありません。そのご質問は dotchi の対象外です。dotchi は、Yang ら（2023）のサーベイ"
        "『Harnessing the Power of LLMs in Practice』に基づき、NLPタスクに LLM を使うべきか、"
        "小さなモデルをファインチューニングすべきかをお答えします。例:「感情分析でラベル付きデータが"
        "20万件ある。LLMとファインチューニング、どっち？」",
        "empty": "質問を入力してください。例:「固有表現抽出（NER）にはLLMとファインチューニング、どっち？」",
        "section": "§{section}",
    },
}
FLIP_ANSWER = {"en": {True: "yes", False: "no"}, "ja": {True: "はい", False: "いいえ"}}
_STATED = ("cue", "labels", "multi", "implied", "learned")  # how a condition the question settles was read
_MARKERS = re.compile(r"\s?\[\d+\]")
_MARKERS_N = re.compile(r"\[(\d+)\]")
_HIRAGANA = re.compile(r"[\u3040-\u309f]+")


@dataclass
class Citation:
    n: int
    chunk: StoredChunk
    title: str
    section: str
    url: str
    support: str = ""  # the chunk's sentence most like the claim that cites it (the UI marks it)

    def to_json(self) -> dict:
        meta = self.chunk.metadata
        out = {
            "n": self.n,
            "doc_id": meta.get("doc_id", ""),
            "title": self.title,
            "section": self.section,
            "url": self.url,
            "text": self.chunk.text,
            "chunk_id": self.chunk.id,
            "lang": meta.get("lang", ""),
        }
        if "page" in meta:
            out["page"] = meta["page"]
        if self.support:
            out["support"] = self.support
        return out


@dataclass
class Citations:
    """Numbers chunks in the order they are first cited; only cited chunks end up here."""

    sources: dict[str, Source]
    items: list[Citation] = field(default_factory=list)

    def cite(self, chunk: StoredChunk | None) -> str:
        if chunk is None:
            return ""
        for c in self.items:
            if c.chunk.id == chunk.id:
                return f" [{c.n}]"
        meta = chunk.metadata
        source = self.sources.get(meta.get("doc_id", ""))
        card = str(meta.get("title", ""))
        title = f"{source.cite_as} — {card}" if source and card and source.cite_as not in card else (card or "")
        self.items.append(
            Citation(
                len(self.items) + 1,
                chunk,
                title or str(meta.get("doc_id", "")),
                str(meta.get("section", "")),
                str(meta.get("url", "") or (source.url if source else "")),
            )
        )
        return f" [{self.items[-1].n}]"

    def render(self, lang: str) -> list[str]:
        lines = []
        for c in self.items:
            section = f", {T[lang]['section'].format(section=c.section)}" if c.section else ""
            page = f", p. {c.chunk.metadata['page']}" if "page" in c.chunk.metadata else ""
            link = f" — {c.url}" if c.url else ""
            lines.append(f"[{c.n}] {c.title}{section}{page}{link}")
        return lines


def _because(state: ConditionState, lang: str) -> str:
    t = T[lang]
    if state.why == "cue":
        return t["because_cue"].format(evidence=state.evidence)
    if state.why == "learned" and state.evidence:
        return t["because_learned"].format(evidence=state.evidence)
    if state.why == "labels":
        return t["because_labels"].format(evidence=int(state.evidence))
    if state.why == "multi":
        return t["because_multi"].format(evidence=state.evidence)
    if state.why == "task":
        return t["because_task"]
    if state.why == "implied":
        return t["because_implied"]
    return ""


def evidence_requests(decision: Decision, flow: DecisionFlow) -> list[tuple[list[str], bool, str | None]]:
    """Every (sections, exact, task it is about) ``compose_decision`` may cite from, so the grounding can fetch
    them up front."""
    stated = [s for s in decision.path if s is decision.deciding or s.why in _STATED]
    first_open = next((s for s in decision.path if s.holds is None), decision.path[0] if decision.path else None)
    wanted: list[tuple[list[str], bool, str | None]] = [(s.condition.sections, False, None) for s in stated]
    if first_open is not None:
        wanted.append((first_open.condition.sections, False, None))
    if decision.task is not None:
        wanted.append((list(decision.task.sections), False, decision.task.id))
    wanted += [(list(c.sections), False, None) for c in decision.considerations]
    wanted.append(([flow.figure_section], True, None))
    return wanted


def compose_decision(decision: Decision, flow: DecisionFlow, lang: str, evidence, cites: Citations) -> str:
    """``evidence(sections, exact=False) -> StoredChunk | None``: the best chunk within (or, unless ``exact``,
    under) those sections, from the grounding's evidence (``Evidence.best``); see ``evidence_requests``."""
    t = T[lang]
    verdict = decision.verdict or "depends"
    lines = [
        t["verdict"].format(label=flow.outcomes[verdict].label[lang]),
        "",
        flow.outcomes[verdict].summary[lang],
        "",
    ]
    task = decision.task
    deciding = decision.deciding
    flow_label = flow.outcomes[decision.flow_verdict].label[lang] if decision.flow_verdict else ""
    if verdict == "depends" and "unknown" in decision.conflicts:
        first_open = next((s for s in decision.path if s.holds is None), decision.path[0])
        lines += [
            t["why"],
            "- "
            + t["unknown"].format(step=first_open.condition.step, question=first_open.condition.question[lang])
            + cites.cite(evidence(first_open.condition.sections)),
        ]
    elif verdict == "depends":
        lines += [t["depends_intro"]]
        if deciding is not None:
            lines.append(
                "- "
                + t["side_flow"].format(
                    step=deciding.condition.step, name=deciding.condition.name[lang], label=flow_label
                )
                + " "
                + deciding.condition.description[lang]
                + cites.cite(evidence(deciding.condition.sections))
            )
        if task is not None and ("task" in decision.conflicts or decision.considerations):
            lines.append(
                "- "
                + t["side_task"].format(
                    name=task.names[lang][0] if task.names[lang] else task.id,
                    label=flow.outcomes[task.verdict].label[lang],
                )
                + " "
                + task.finding[lang]
                + cites.cite(evidence(task.sections, about=task.id))
            )
        for cons in decision.considerations:
            if cons.favours in flow.outcomes:
                lines.append(
                    "- "
                    + t["side_cons"].format(note=cons.note[lang], label=flow.outcomes[cons.favours].label[lang])
                    + cites.cite(evidence(cons.sections))
                )
    else:
        lines.append(t["why"])
        if deciding is not None:
            cond = deciding.condition
            if deciding.holds:
                text = t["cond_yes"].format(
                    step=cond.step,
                    name=cond.name[lang],
                    because=_because(deciding, lang),
                    description=cond.description[lang],
                )
            elif cond.no != "next" and cond.no == "fine_tuned":
                text = t["common_nlu"].format(step=cond.step, name=cond.name[lang])
            else:
                text = t["cond_no"].format(step=cond.step, name=cond.name[lang], because=_because(deciding, lang))
                text = (
                    text.rsplit("。" if lang == "ja" else ". ", 1)[0]
                    + ("。" if lang == "ja" else ". ")
                    + cond.description[lang]
                )
            lines.append("- " + text + cites.cite(evidence(cond.sections)))
        for state in decision.path:
            if state is deciding:
                continue
            if state.why in _STATED:
                template = t["cond_next"] if state.holds else t["cond_no"]
                lines.append(
                    "- "
                    + template.format(
                        step=state.condition.step, name=state.condition.name[lang], because=_because(state, lang)
                    )
                    + cites.cite(evidence(state.condition.sections))
                )
        if task is not None:
            name = task.names[lang][0] if task.names[lang] else task.id
            if task.verdict != verdict and not task.generic:  # a finding from another regime: the other side
                line = t["other_side"].format(
                    name=name, label=flow.outcomes[task.verdict].label[lang], finding=task.finding[lang]
                )
            else:
                line = t["task"].format(name=name, finding=task.finding[lang])
            lines.append("- " + line + cites.cite(evidence(task.sections, about=task.id)))
    lines += ["", t["path"] + cites.cite(evidence([flow.figure_section], exact=True))]
    for state in decision.path:
        lines.append(
            t["path_item"].format(
                step=state.condition.step, name=state.condition.name[lang], answer=t["answers"][state.holds]
            )
        )
    if decision.flow_verdict:
        lines.append(t["outcome"].format(label=flow_label))
    cautions = [c for c in decision.considerations if verdict != "depends" or c.favours not in flow.outcomes]
    if cautions:
        lines += ["", t["caveats"]]
        lines += ["- " + c.note[lang] + cites.cite(evidence(c.sections)) for c in cautions]
    if decision.flips:
        lines += ["", t["flips"]]
        for state, new_verdict in decision.flips[:3]:
            lines.append(
                "- "
                + t["flip"].format(
                    question=state.condition.question[lang],
                    answer=FLIP_ANSWER[lang][not bool(state.holds)],
                    label=flow.outcomes[new_verdict].label[lang],
                    step=state.condition.step,
                )
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- content answers
_ITEM = re.compile(r"^\s*(?:[-*•・]\s+|(?P<num>\d{1,2})[.)]\s+|\((?P<paren>\d{1,2})\)\s*)")
# A sentence may end at 。 (always), or at . ! ? (plus closing quotes/brackets) before whitespace; ! and ? also
# before a Japanese letter (NFKC turns ！？ into !?).
_JA_END = re.compile(rf"[。][」』)\]]*|[!?][」』)\]]*(?=[{KANA_RANGES}{HAN_RANGES}])")
_EN_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s)")
_NEXT_STARTS = re.compile(rf"\s*[\"'“‘(\[]?[A-Z0-9{KANA_RANGES}{HAN_RANGES}]")
_COMPLETE = re.compile(r"[.!?。][\"'”’)）」』\]]*$")
_LAST_WORD = re.compile(r"(?:^|\s|\()(\S+)$")


@dataclass(frozen=True)
class Piece:
    """A whole sentence, or a whole list item, of a chunk."""

    text: str
    block: int  # paragraph or item index within the chunk
    item: bool = False  # a list item (its marker removed)


def _ends_sentence(text: str, end: int, abbreviations: frozenset[str]) -> bool:
    """Whether the full stop (or ! ?) just before ``end`` closes a sentence: not after an abbreviation ("Sec.",
    "e.g.", "et al.") or an initial ("J."), and only before a capital, a digit or a Japanese letter."""
    if not _NEXT_STARTS.match(text, end):
        return False
    word = _LAST_WORD.search(text[:end].rstrip("\"'”’)]"))
    last = word.group(1).lower().lstrip("(\"'“‘[") if word else ""
    if last in abbreviations or re.fullmatch(r"\(?[a-z]\.", last):
        return False
    return not (last == "al." and text[:end].lower().rstrip().endswith("et al."))


def split_sentences(text: str, abbreviations: frozenset[str] = frozenset()) -> list[str]:
    """Whole sentences of one paragraph or item, in order (Japanese and English; abbreviations do not split)."""
    cuts = {m.end() for m in _JA_END.finditer(text)}
    cuts |= {m.end() for m in _EN_END.finditer(text) if _ends_sentence(text, m.end(), abbreviations)}
    out, start = [], 0
    for cut in sorted(cuts):
        if text[start:cut].strip():
            out.append(text[start:cut].strip())
        start = cut
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def pieces(text: str, abbreviations: frozenset[str] = frozenset()) -> list[Piece]:
    """A chunk cut into whole sentences and whole list items (markers removed), in reading order."""
    blocks: list[tuple[str, bool]] = []
    for line in text.splitlines():
        if not line.strip():
            blocks.append(("", False))
            continue
        marker = _ITEM.match(line)
        if marker:
            blocks.append((line[marker.end() :].strip(), True))
        elif blocks and blocks[-1][0] and not blocks[-1][1]:
            blocks[-1] = (blocks[-1][0] + " " + line.strip(), False)  # a wrapped line of the same paragraph
        elif blocks and blocks[-1][1] and line[:1].isspace():
            blocks[-1] = (blocks[-1][0] + " " + line.strip(), True)  # an indented continuation of an item
        else:
            blocks.append((line.strip(), False))
    out: list[Piece] = []
    for index, (block, item) in enumerate(b for b in blocks if b[0]):
        if item:
            out.append(Piece(block, index, True))
        else:
            out += [Piece(sentence, index) for sentence in split_sentences(block, abbreviations)]
    return out


@dataclass(frozen=True)
class Ask:
    """What a content question asks for: ``kind`` "list" (every point), "count" (``n`` points), "definition" (of
    ``term``) or "plain"."""

    kind: str = "plain"
    n: int = 0
    term: str = ""


def read_ask(question: str, asks: ContentAsks) -> Ask:
    """The kind of content ask, from the patterns in ``corpus/content.toml``."""
    for pattern in asks.count_patterns:
        found = pattern.search(question)
        if found and found.group("n").lower() in asks.counts:
            return Ask("count", asks.counts[found.group("n").lower()])
    for pattern in asks.definition_asks:
        found = pattern.search(question)
        if found and found.group("term").strip(" 「」『』\"'"):
            return Ask("definition", term=found.group("term").strip(" 「」『』\"'"))
    if any(p.search(question) for p in asks.list_asks):
        return Ask("list")
    return Ask()


def _title(chunk: StoredChunk) -> str:
    return str(chunk.metadata.get("title", ""))


def _join(parts: list[str], lang: str) -> str:
    return ("" if lang == "ja" else " ").join(parts)


def best_sentences(
    text: str, question_terms: set[str], limit: int = 2, abbreviations: frozenset[str] = frozenset()
) -> list[str]:
    """Up to ``limit`` whole sentences (or list items) of a chunk sharing the most terms with the question, in
    their original order. Only pieces that end like a sentence: a sentence introducing a list (ending in a colon),
    an item ending in ";" or a heading-like line means little without its context."""
    found = [p for p in pieces(text, abbreviations) if _COMPLETE.search(p.text)]
    ranked = sorted(range(len(found)), key=lambda i: (-len(question_terms & set(tokenize(found[i].text))), i))
    return [found[i].text for i in sorted(ranked[:limit])]


TOPIC_BUDGET = 900  # weighted characters (CJK count 2) of a card about the asked topic quoted from its start


def lead_sentences(text: str, budget: int, abbreviations: frozenset[str] = frozenset()) -> list[str]:
    """The chunk's complete sentences from its start, in order, while they fit ``budget`` weighted characters (at
    least one): a card about the asked topic reads best as written."""
    out: list[str] = []
    used = 0
    for piece in pieces(text, abbreviations):
        if not _COMPLETE.search(piece.text):
            continue
        size = weighted_len(piece.text)
        if out and used + size > budget:
            break
        out.append(piece.text)
        used += size
    return out


def _definition(chunks: list[StoredChunk], term: str, asks: ContentAsks) -> tuple[int, str] | None:
    """(chunk index, sentence) of the sentence that best defines ``term``: it names the term and uses a defining
    word ("is", "refers to", 「とは」, 「を指す」); one that opens with the term ("An LLM, in their usage, is",
    「ファインチューニングしたモデル：」) beats one that mentions it later; earlier chunks win ties."""
    wanted = set(tokenize(term))
    if not wanted:
        return None
    best: tuple[int, int, int, str] | None = None  # (-score, chunk index, position, sentence)
    for index, chunk in enumerate(chunks):
        title = str(chunk.metadata.get("title", "")).lower()
        defining = any(word in title for word in asks.definition_titles)  # a card about definitions
        for position, piece in enumerate(pieces(chunk.text, asks.abbreviations)):
            text = piece.text.lower()
            cues = asks.definition_cues.get("ja" if CJK.search(piece.text) else "en", ())
            if not wanted <= set(tokenize(piece.text)) or not any(cue.lower() in text for cue in cues):
                continue
            head = re.split(r"[:：,、]| is | are |とは|は", text, maxsplit=1)[0]
            score = (2 if wanted <= set(tokenize(head)) else 1) + (2 if defining else 0)
            candidate = (-score, index, position, piece.text)
            best = candidate if best is None or candidate < best else best
    return (best[1], best[3]) if best else None


def _list_answer(chunk: StoredChunk, ask: Ask, asks: ContentAsks) -> list[str] | None:
    """The chunk's list: the sentence that introduces it, then every point (``ask.n`` points for a count ask)."""
    found = pieces(chunk.text, asks.abbreviations)
    items = [p for p in found if p.item]
    if len(items) < 2 or (ask.kind == "count" and len(items) < ask.n):
        return None
    first = found.index(items[0])
    intro = [p.text for p in found[:first] if p.block == found[first - 1].block] if first else []
    chosen = items[: ask.n] if ask.kind == "count" else items
    return intro[-2:] + [f"{i}. {p.text}" for i, p in enumerate(chosen, start=1)]


def compose_content(
    chunks: list[StoredChunk], question: str, lang: str, cites: Citations, asks: ContentAsks | None = None
) -> str:
    """A content answer of whole sentences with [n] markers: the points of a remark or list when the question asks
    for them ("what does Remark 5 say", "the three challenges"), a definition first when it asks for one, else the
    sentences of each chunk closest to the question."""
    asks = asks or ContentAsks()
    terms = set(tokenize(question))
    ask = read_ask(question, asks)
    lines = [T[lang]["content_intro"], ""]
    rest = list(chunks)
    if ask.kind == "definition" and (found := _definition(chunks, ask.term, asks)):
        index, sentence = found
        lines = [sentence + cites.cite(chunks[index]), ""]
        others = [s for s in best_sentences(chunks[index].text, terms, 2, asks.abbreviations) if s != sentence]
        if others:
            lines[-1:] = [_join(others[:1], lang) + cites.cite(chunks[index]), ""]
        rest = chunks[:index] + chunks[index + 1 :]
    elif ask.kind in ("list", "count"):
        # The chunk with a list whose title shares the most terms with the question ("Remark 1" -> the Remark 1
        # card, not another card of section 3 that happens to hold a list); earlier chunks win ties.
        listed = [(i, found) for i, c in enumerate(chunks) if (found := _list_answer(c, ask, asks))]
        if listed:
            index, found = min(listed, key=lambda x: (-len(terms & set(tokenize(_title(chunks[x[0]])))), x[0]))
            lines += [f"**{_title(chunks[index])}**{cites.cite(chunks[index])}", *found, ""]
            rest = chunks[:index] + chunks[index + 1 :]
    limit = 1 if len(lines) > 2 else 4  # the first source gets room unless a list or definition led
    specific = terms - asks.generic_terms
    for position, chunk in enumerate(rest):
        if limit > 1 and specific & set(tokenize(_title(chunk))):
            chosen = lead_sentences(chunk.text, TOPIC_BUDGET, asks.abbreviations)  # a card about the very topic
        else:
            chosen = best_sentences(chunk.text, terms, limit, asks.abbreviations)
        if position and not specific & set(tokenize(" ".join(chosen))):
            continue  # a further chunk must share a specific word with the question, not only "survey" or "say"
        if chosen:
            heading = chunk.metadata.get("title", "")
            lines.append(f"- **{heading}**: {_join(chosen, lang)}{cites.cite(chunk)}")
        limit = 1
    return "\n".join(lines).strip()


def content_chunks(hits, lang: str, survey_id: str, first=(), limit: int = 3, near: float = 0.8) -> list[StoredChunk]:
    """The chunks a content answer quotes, from the fused ``hits``: chunks of sections the question names
    (``first``), then one chunk per card (a card's English and Japanese versions count as one) in the question's
    language first; among hits scoring within ``near`` of the best, the survey's own sections come before
    secondary sources."""
    top = max((h.score for h in hits), default=0.0)
    ranked = sorted(
        enumerate(hits[:8]),
        key=lambda item: (
            item[1].chunk.metadata.get("lang") != lang,
            not (item[1].score >= near * top and item[1].chunk.metadata.get("doc_id") == survey_id),
            item[0],
        ),
    )
    out: list[StoredChunk] = []
    seen: set[tuple[str, str]] = set()
    for chunk in [*first, *(hit.chunk for _, hit in ranked)]:
        meta = chunk.metadata
        card = (str(meta.get("doc_id", "")), PurePath(str(meta.get("source_path", ""))).name or chunk.id)
        if card in seen:
            continue
        seen.add(card)
        out.append(chunk)
    return out[:limit]


def _content_terms(text: str) -> set[str]:
    """Tokens that carry meaning for matching a claim to a sentence (no one-letter or all-hiragana tokens)."""
    return {t for t in tokenize(text) if len(t) >= 2 and not _HIRAGANA.fullmatch(t)}


def support_sentence(chunk_text: str, claim: str) -> str:
    """The sentence of ``chunk_text`` most like ``claim`` (shared content terms, length-normalised); "" if none
    shares a term."""
    claim_terms = _content_terms(_MARKERS.sub("", claim))
    best, best_score = "", 0.0
    for sentence in (s for line in chunk_text.splitlines() for s in split_sentences(line)):
        terms = _content_terms(sentence)
        score = len(claim_terms & terms) / (len(terms) + 1) ** 0.5 if terms else 0.0
        if score > best_score:
            best, best_score = sentence, score
    return best


def mark_support(body: str, cites: Citations) -> None:
    """Give each citation the sentence of its chunk that supports the first line citing it."""
    done: set[int] = set()
    for line in body.split("\n"):
        for n in (int(m) for m in _MARKERS_N.findall(line)):
            if n not in done and 1 <= n <= len(cites.items):
                done.add(n)
                item = cites.items[n - 1]
                item.support = support_sentence(item.chunk.text, line)


def with_sources(body: str, lang: str, cites: Citations) -> str:
    if not cites.items:
        return body
    return "\n".join([body, "", T[lang]["sources"], *[f"- {line}" for line in cites.render(lang)]])
