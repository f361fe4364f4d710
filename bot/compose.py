"""The default answer composer (no LLM): verdict, reasons with [n] citations, flow path, caveats, what would
change the verdict, and sources — in Japanese or English. Templates are module constants."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from bot.engine import ConditionState, Decision
from bot.knowledge import ContentAsks, DecisionFlow, Source
from bot.text import tokenize
from ingest.chunking import weighted_len
from ingest.store import StoredChunk
from ingest.terms import HIRAGANA, chunk_sentences, content_terms, parse_sentence_terms
from ingest.text import CJK, split_sentences

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
QUOTED = re.compile(r"“[^”]*”|「[^」]*」")  # the user's words quoted as evidence: not the line's own claim


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


def _user_words(text: str) -> str:
    """The user's words as quoted in an answer: a "[0]" they typed becomes "［0］", so it is not read as a citation."""
    return _MARKERS_N.sub(r"［\1］", text)


def _because(state: ConditionState, lang: str) -> str:
    t = T[lang]
    if state.why == "cue":
        return t["because_cue"].format(evidence=_user_words(state.evidence))
    if state.why == "learned" and state.evidence:
        return t["because_learned"].format(evidence=_user_words(state.evidence))
    if state.why == "labels":
        return t["because_labels"].format(evidence=int(state.evidence))
    if state.why == "multi":
        return t["because_multi"].format(evidence=_user_words(state.evidence))
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

    def cite_condition(text: str, sections: Sequence[str]) -> str:
        """A condition's line cites its sections' best chunk; when the line names the matched task (step 2's
        "emergent abilities"), the chunk about that task instead, if it lies within the condition's sections."""
        if task is not None and task.named_in(QUOTED.sub("", text)):
            chunk = evidence(task.sections, about=task.id)
            section = str(chunk.metadata.get("section", "")) if chunk is not None else ""
            if section and any(section == s or section.startswith(s + ".") for s in sections):
                return cites.cite(chunk)
        return cites.cite(evidence(sections))
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
            )
            lines[-1] += cite_condition(lines[-1], deciding.condition.sections)
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
            lines.append("- " + text + cite_condition(text, cond.sections))
        for state in decision.path:
            if state is deciding:
                continue
            if state.why in _STATED:
                template = t["cond_next"] if state.holds else t["cond_no"]
                text = template.format(
                    step=state.condition.step, name=state.condition.name[lang], because=_because(state, lang)
                )
                lines.append("- " + text + cite_condition(text, state.condition.sections))
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
_COMPLETE = re.compile(r"[.!?。][\"'”’)）」』\]]*$")


@dataclass(frozen=True)
class Piece:
    """A whole sentence, or a whole list item, of a chunk."""

    text: str
    block: int  # paragraph or item index within the chunk
    item: bool = False  # a list item (its marker removed)


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


TOPIC_BUDGET = 1600  # weighted characters (CJK count 2) of the card about the asked topic: most cards fit whole
TOPICAL_FURTHER = 3  # sentences of a further card whose title also shares the question's specific words
UNIT_MAX = 600  # a unit longer than this (a long list) is not quoted as one of a further source's few sentences


@dataclass(frozen=True)
class Unit:
    """What a content answer quotes as one piece: a whole sentence, or a list joined to the sentence that
    introduces it (so "the models showed:" never stands without its items, nor an item without its intro)."""

    text: str
    chunks: tuple[StoredChunk, ...]  # the chunks of the card it was read from, in order
    items: tuple[str, ...] = ()  # a list's points (its markers removed)
    intro: str = ""  # a list's introducing sentence ("" when the list opens the card)
    block: int = 0  # the card paragraph it starts in (units of one paragraph share it)


def card_pieces(card: Sequence[StoredChunk], abbreviations: frozenset[str]) -> list[tuple[Piece, StoredChunk]]:
    """Every piece of a card over all its chunks, in reading order, each with the chunk it comes from; the
    sentences one chunk carries over into the next (the chunker's overlap) are read once."""
    out: list[tuple[Piece, StoredChunk]] = []
    seen: set[tuple[bool, str]] = set()
    offset = 0
    for chunk in card:
        found = pieces(chunk.text, abbreviations)
        for piece in found:
            if (piece.item, piece.text) in seen:
                continue
            seen.add((piece.item, piece.text))
            out.append((Piece(piece.text, piece.block + offset, piece.item), chunk))
        offset += 1 + max((p.block for p in found), default=0)
    return out


def card_units(card: Sequence[StoredChunk], lang: str, abbreviations: frozenset[str]) -> list[Unit]:
    """A card's quotable units in reading order: each complete sentence, and each list with the sentence just
    before it. Units that do not end like a sentence (a heading-like line, an item ending in ";") are left out."""
    raw: list[tuple[list[str], list[StoredChunk], list[str], int]] = []  # (intro sentences, chunks, items, block)
    for piece, chunk in card_pieces(card, abbreviations):
        if piece.item and raw:
            texts, chunks, items, _ = raw[-1]
            items.append(piece.text)
            if chunk not in chunks:
                chunks.append(chunk)
        else:
            raw.append(([] if piece.item else [piece.text], [chunk], [piece.text] if piece.item else [], piece.block))
    out = []
    for texts, chunks, items, block in raw:
        text = _join(texts + items, lang)
        if text and _COMPLETE.search(text):
            out.append(Unit(text, tuple(chunks), tuple(items), _join(texts, lang) if items else "", block))
    return out


def _depth(chunk: StoredChunk) -> int:
    """How specific a survey section is: "4.4.1" -> 3, "4" -> 1; a non-numbered section -> 0."""
    section = str(chunk.metadata.get("section", ""))
    return section.count(".") + 1 if re.fullmatch(r"\d+(?:\.\d+)*", section) else 0


def _overlap(terms: set[str], text: str) -> int:
    return len(terms & set(tokenize(text)))


def topic_units(units: list[Unit], terms: set[str], budget: int = TOPIC_BUDGET) -> list[Unit]:
    """The card about the asked topic: whole when it fits ``budget`` weighted characters, else its first unit and
    then the units sharing the most terms with the question while they fit, in reading order."""
    sizes = [weighted_len(u.text) for u in units]
    if sum(sizes) <= budget:
        return list(units)
    chosen, used = {0}, sizes[0] if sizes else 0
    for i in sorted(range(1, len(units)), key=lambda i: (-_overlap(terms, units[i].text), i)):
        if used + sizes[i] <= budget:
            chosen.add(i)
            used += sizes[i]
    return [units[i] for i in sorted(chosen) if i < len(units)]


def _paragraphs(units: list[Unit]) -> list[list[Unit]]:
    """Units grouped by the paragraph they start in (a list ends its paragraph's line)."""
    groups: list[list[Unit]] = []
    for unit in units:
        if groups and not groups[-1][-1].items and groups[-1][-1].block == unit.block:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


def best_units(units: list[Unit], terms: set[str], limit: int) -> list[Unit]:
    """Up to ``limit`` units sharing the most terms with the question (long lists aside), in reading order."""
    short = [i for i, u in enumerate(units) if weighted_len(u.text) <= UNIT_MAX]
    ranked = sorted(short, key=lambda i: (-_overlap(terms, units[i].text), i))
    return [units[i] for i in sorted(ranked[:limit])]


def _definition(cards: list[list[Unit]], term: str, titles: list[str], asks: ContentAsks) -> tuple[int, Unit] | None:
    """(card index, unit) of the sentence that best defines ``term``: it names the term and uses a defining word
    ("is", "refers to", 「とは」, 「を指す」); one that opens with the term ("An LLM, in their usage, is",
    「ファインチューニングしたモデル：」) beats one that mentions it later; earlier cards win ties."""
    wanted = set(tokenize(term))
    if not wanted:
        return None
    best: tuple[int, int, int, Unit] | None = None  # (-score, card index, position, unit)
    for index, units in enumerate(cards):
        defining = any(word in titles[index].lower() for word in asks.definition_titles)  # a card about definitions
        # A list item "LLM: a very large model ..." / 「LLM：膨大なデータで…」 defines its opening term by its form.
        candidates = [u for unit in units for u in ([Unit(i, unit.chunks) for i in unit.items] or [unit])]
        for position, unit in enumerate(candidates):
            text = unit.text.lower()
            cues = asks.definition_cues.get("ja" if CJK.search(unit.text) else "en", ())
            labelled = re.match(r"[^:：。.]{1,40}[:：]", text)
            if not wanted <= set(tokenize(unit.text)) or not (
                any(cue.lower() in text for cue in cues) or (labelled and wanted <= set(tokenize(labelled.group())))
            ):
                continue
            head = re.split(r"[:：,、]| is | are |とは|は", text, maxsplit=1)[0]
            score = (2 if wanted <= set(tokenize(head)) else 1) + (2 if defining else 0)
            candidate = (-score, index, position, unit)
            best = candidate if best is None or candidate[:3] < best[:3] else best
    return (best[1], best[3]) if best else None


def _list_answer(units: list[Unit], ask: Ask) -> tuple[list[str], tuple[StoredChunk, ...]] | None:
    """A card's list: the sentence that introduces it, then every point (``ask.n`` points for a count ask), and
    the chunks they come from."""
    for unit in units:
        if len(unit.items) < 2 or (ask.kind == "count" and len(unit.items) < ask.n):
            continue
        chosen = unit.items[: ask.n] if ask.kind == "count" else unit.items
        return ([unit.intro] if unit.intro else []) + [f"{i}. {p}" for i, p in enumerate(chosen, start=1)], unit.chunks
    return None


def specific_terms(question: str, asks: ContentAsks) -> set[str]:
    """The question's words that pick out a topic: not its generic words and phrases ("survey", "say", "LLM",
    "fine-tuned"), one-letter or all-hiragana tokens (numbers stay: "Remark 6")."""
    text = question.lower()
    for phrase in asks.generic_phrases:
        text = text.replace(phrase, " ")
    named = {n for m in asks.named_number.findall(text) for n in m if n}  # "Remark 6", 「図2」, 「4.1節」
    return {t for t in set(tokenize(text)) - asks.generic_terms
            if (t in named or (len(t) >= 2 and not t.isdigit())) and not HIRAGANA.fullmatch(t)}


def _cite_all(chunks: Sequence[StoredChunk], cites: Citations) -> str:
    return "".join(dict.fromkeys(cites.cite(c) for c in chunks))


def compose_content(
    chunks: list[StoredChunk],
    question: str,
    lang: str,
    cites: Citations,
    asks: ContentAsks | None = None,
    cards: dict[str, list[StoredChunk]] | None = None,
) -> str:
    """A content answer of whole sentences with [n] markers. ``cards``: every chunk of each given chunk's card, in
    order (chunk id -> chunks), so a card is read whole rather than from the one chunk retrieval found. The card
    whose title shares the most words with the question is the topic: the points of its list when the question
    asks for them ("what does Remark 5 say", "the three challenges"), else the card as written (within
    ``TOPIC_BUDGET``, one line per paragraph); a definition first when the question asks for one; then up to
    ``TOPICAL_FURTHER`` sentences of a further card whose title also names the topic, one of any other card, each
    only when it shares a specific word with the question."""
    asks = asks or ContentAsks()
    cards = cards or {}
    terms = set(tokenize(question))
    specific = specific_terms(question, asks)
    further = specific_terms(asks.named_number.sub(" ", question.lower()), asks)  # "Remark 5" alone names one card
    ask = read_ask(question, asks)
    read = [card_units(cards.get(c.id) or [c], lang, asks.abbreviations) for c in chunks]
    titled = [_overlap(specific, _title(c)) for c in chunks]
    top = max(titled, default=0)
    # The topic card first (on a tie the more specific section: "4.4.1" before its summary "4.4"), then as retrieved.
    order = sorted(range(len(chunks)), key=lambda i: (-titled[i], -_depth(chunks[i]) if titled[i] else 0, i))
    lines = [T[lang]["content_intro"], ""]
    led = False
    if ask.kind == "definition" and (found := _definition([read[i] for i in order], ask.term,
                                                          [_title(chunks[i]) for i in order], asks)):
        index, unit = found
        index = order[index]
        lines = [unit.text + _cite_all(unit.chunks, cites), ""]
        after = next((k + 1 for k, u in enumerate(read[index]) if unit.text in u.text), len(read[index]))
        following = read[index][after : after + 1]  # the sentence after a definition usually completes it
        others = following if following and following[0].block == unit.block and not following[0].items else [
            u for u in best_units(read[index], terms, 2) if unit.text not in u.text][:1]
        if others:
            lines[-1:] = [others[0].text + _cite_all(others[0].chunks, cites), ""]
        order.remove(index)
        led = True
    elif ask.kind in ("list", "count"):
        # The list of the card whose title shares the most words with the question ("Remark 1" -> the Remark 1
        # card, not another card that happens to hold a list); any card's list when no title does.
        for i in [i for i in order if titled[i] == top] if top else order:
            if (found := _list_answer(read[i], ask)) is not None:
                points, used = found
                lines += [f"**{_title(chunks[i])}**{_cite_all(used, cites)}", *points, ""]
                order.remove(i)
                led = True
                break
    limit = 1 if led else 4  # the first source gets room unless a list or definition led
    for position, i in enumerate(order):
        if not led and position == 0 and titled[i]:
            # The card about the very topic, read as written: its title, then one line per paragraph.
            chosen = topic_units(read[i], terms)
            lines.append(f"**{_title(chunks[i])}**")
            for group in _paragraphs(chosen):
                used = [c for u in group for c in u.chunks]
                lines += [_join([u.text for u in group], lang) + _cite_all(used, cites), ""]
            limit = 1
            continue
        # A further card whose title also names the topic gets a few sentences, any other one sentence.
        chosen = best_units(read[i], terms, max(limit, TOPICAL_FURTHER if titled[i] else 1))
        if position and not further & set(tokenize(" ".join(u.text for u in chosen))):
            continue  # a further chunk must share a specific word with the question, not only "survey" or "say"
        if chosen:
            used = [c for u in chosen for c in u.chunks]
            lines.append(f"- **{_title(chunks[i])}**: {_join([u.text for u in chosen], lang)}{_cite_all(used, cites)}")
        limit = 1
    return "\n".join(lines).strip()


def content_chunks(
    hits, lang: str, survey_id: str, first=(), limit: int = 3, near: float = 0.8, terms: frozenset[str] = frozenset()
) -> list[StoredChunk]:
    """The chunks a content answer quotes, from the fused ``hits``: chunks of sections the question names
    (``first``), then one chunk per card (a card's English and Japanese versions count as one) in the question's
    language first; then cards whose title shares more of the question's specific ``terms`` (``specific_terms``:
    "cost" finds the cost card even when label-count cards rank higher); among hits scoring within ``near`` of the
    best, the survey's own sections come before secondary sources."""
    top = max((h.score for h in hits), default=0.0)
    ranked = sorted(
        enumerate(hits[:8]),
        key=lambda item: (
            item[1].chunk.metadata.get("lang") != lang,
            not (item[1].score >= near * top and item[1].chunk.metadata.get("doc_id") == survey_id),
            item[0],
        ),
    )
    titled = [(_overlap(set(terms), _title(h.chunk)), -n) for n, (_, h) in enumerate(ranked)
              if h.chunk.metadata.get("lang") == lang]
    if titled and max(titled)[0] > 0:  # the card named by the question's words leads (then the order above)
        ranked.insert(0, ranked.pop(-max(titled)[1]))
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


def support_sentence(chunk_text: str, claim: str, stored_terms: str | None = None) -> str:
    """The sentence of ``chunk_text`` most like ``claim`` (shared content terms, length-normalised); "" if none
    shares a term. ``stored_terms``: the chunk's ``sentence_terms`` metadata, written at ingest, so the sentences
    need no tokenising here."""
    claim_terms = content_terms(QUOTED.sub("", _MARKERS.sub("", claim)))  # the claim, not the user's words
    best, best_score = "", 0.0
    sentences = chunk_sentences(chunk_text)
    for sentence, terms in zip(sentences, parse_sentence_terms(stored_terms, sentences), strict=True):
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
                terms = item.chunk.metadata.get("sentence_terms")
                item.support = support_sentence(item.chunk.text, line, terms if isinstance(terms, str) else None)


def with_sources(body: str, lang: str, cites: Citations) -> str:
    if not cites.items:
        return body
    return "\n".join([body, "", T[lang]["sources"], *[f"- {line}" for line in cites.render(lang)]])
