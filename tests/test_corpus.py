"""The corpus: card coverage and front matter, the decision flow as data, the dev set, and a copy guard."""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from bot.engine import ConditionState, DecisionEngine
from bot.knowledge import VERDICTS, load_flow, load_sources
from bot.text import detect_language

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "corpus"
CARDS = CORPUS / "cards"
SHARED = Path(__file__).resolve().parents[2] / "shared"
SURVEY = "yang2023harnessing"
LANGS = ("en", "ja")
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.DOTALL)


# ---------------------------------------------------------------------------------------------- helpers
@lru_cache(maxsize=1)
def sources_toml() -> dict:
    return tomllib.loads((CORPUS / "sources.toml").read_text(encoding="utf-8"))


def source_sections() -> dict[str, list[str]]:
    return {s["doc_id"]: [str(x["id"]) for x in s.get("sections", [])] for s in sources_toml()["sources"]}


@lru_cache(maxsize=1)
def cards() -> list[tuple[Path, dict, str]]:
    """(path, front matter, body) for every card."""
    out = []
    for path in sorted(CARDS.rglob("*.md")):
        m = FRONT_MATTER.match(path.read_text(encoding="utf-8"))
        assert m, f"{path}: no YAML front matter"
        meta = yaml.safe_load(m.group(1))
        assert isinstance(meta, dict), f"{path}: front matter is not a mapping"
        out.append((path, meta, m.group(2)))
    return out


def under(section: str, parent: str) -> bool:
    return section == parent or section.startswith(parent + ".")


@lru_cache(maxsize=1)
def flow_data() -> dict:
    return tomllib.loads((CORPUS / "decision_flow.toml").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def flow():
    return load_flow(CORPUS / "decision_flow.toml")


# ---------------------------------------------------------------------------------------------- cards
def test_there_are_cards_in_both_languages() -> None:
    """Both card folders exist and hold cards."""
    by_lang = {lang: [p for p, _, _ in cards() if p.relative_to(CARDS).parts[0] == lang] for lang in LANGS}
    assert all(len(v) >= 10 for v in by_lang.values()), {k: len(v) for k, v in by_lang.items()}


@pytest.mark.parametrize("lang", LANGS)
def test_every_survey_section_has_a_card(lang: str) -> None:
    """Each section id of the survey has at least one card in this language (subsections count)."""
    sections = source_sections()[SURVEY]
    card_sections = [str(meta["section"]) for p, meta, _ in cards()
                     if meta.get("doc_id") == SURVEY and p.relative_to(CARDS).parts[0] == lang]
    missing = [s for s in sections if not any(under(c, s) for c in card_sections)]
    assert not missing, f"survey sections without a {lang} card: {missing}"


def test_card_front_matter() -> None:
    """doc_id/section/title/lang/url present; lang matches the folder; doc_id and section exist in sources.toml."""
    known = source_sections()
    urls = {s["doc_id"]: s.get("url", "") for s in sources_toml()["sources"]}
    problems = []
    for path, meta, body in cards():
        rel = path.relative_to(CARDS)
        for key in ("doc_id", "section", "title", "lang", "url"):
            if not str(meta.get(key) or "").strip():
                problems.append(f"{rel}: missing {key}")
        if not isinstance(meta.get("section"), str):
            problems.append(f"{rel}: section {meta.get('section')!r} is not a quoted string")
        if meta.get("lang") != rel.parts[0]:
            problems.append(f"{rel}: lang {meta.get('lang')!r} but folder {rel.parts[0]!r}")
        doc_id = meta.get("doc_id")
        if doc_id not in known:
            problems.append(f"{rel}: doc_id {doc_id!r} not in sources.toml")
            continue
        if rel.parts[1] != doc_id:
            problems.append(f"{rel}: doc_id {doc_id!r} but folder {rel.parts[1]!r}")
        if str(meta.get("section")) not in known[doc_id]:
            problems.append(f"{rel}: section {meta.get('section')!r} is not a section of {doc_id}")
        if meta.get("url") != urls[doc_id]:
            problems.append(f"{rel}: url {meta.get('url')!r} != {urls[doc_id]!r}")
        if not body.strip():
            problems.append(f"{rel}: empty body")
    assert not problems, "\n".join(problems)


def test_load_sources_reads_every_source() -> None:
    """load_sources gives every doc_id of sources.toml, and the survey cites as 'Yang et al. (2023)'."""
    sources = load_sources(CORPUS / "sources.toml")
    assert set(sources) == set(source_sections())
    assert sources[SURVEY].cite_as == "Yang et al. (2023)"


# ---------------------------------------------------------------------------------------------- decision flow
def _flow_items() -> list[tuple[str, dict]]:
    data = flow_data()
    return ([(f"conditions.{c['id']}", c) for c in data["conditions"]]
            + [(f"tasks.{t['id']}", t) for t in data["tasks"]]
            + [(f"considerations.{c['id']}", c) for c in data["considerations"]])


def test_flow_items_have_bilingual_text_and_known_sections() -> None:
    """Every condition/task/consideration has en+ja text, >=1 section, and names only real survey sections."""
    survey_sections = set(source_sections()[SURVEY])
    stems = {"conditions": ("name", "description", "question"), "tasks": ("finding",),
             "considerations": ("note",)}
    problems = []
    items = _flow_items()
    assert len(items) >= 10 + 20 + 3
    for where, item in items:
        for stem in stems[where.split(".")[0]]:
            for lang in LANGS:
                if not str(item.get(f"{stem}_{lang}", "")).strip():
                    problems.append(f"{where}: no {stem}_{lang}")
        if where.startswith("tasks."):
            for lang in LANGS:
                if not item.get(f"names_{lang}"):
                    problems.append(f"{where}: no names_{lang}")
        sections = item.get("sections") or []
        if not sections:
            problems.append(f"{where}: no sections")
        problems += [f"{where}: section {s!r} is not a survey section" for s in sections
                     if str(s) not in survey_sections]
    assert str(flow_data()["figure_section"]) in survey_sections
    assert not problems, "\n".join(problems)


def test_flow_text_is_in_the_right_language() -> None:
    """The *_ja strings are Japanese and the *_en strings English."""
    wrong = []
    for where, item in _flow_items():
        for key, value in item.items():
            is_text = isinstance(value, str) and key.endswith(("_en", "_ja")) and key != "figure_text"
            if is_text and detect_language(value) != key[-2:]:
                wrong.append(f"{where}.{key}")
    assert not wrong, wrong


def test_figure2_steps_and_routing() -> None:
    """The ten conditions sit in steps 1..10 with Figure 2's yes/no routing."""
    expected = {1: ("llm", "next"), 2: ("llm", "next"), 3: ("llm", "next"), 4: ("fine_tuned", "next"),
                5: ("llm", "next"), 6: ("llm", "next"), 7: ("llm", "next"), 8: ("next", "fine_tuned"),
                9: ("fine_tuned", "next"), 10: ("neither", "llm")}
    conditions = flow().conditions
    assert [c.step for c in conditions] == list(range(1, 11))
    assert len({c.id for c in conditions}) == 10
    assert {c.step: (c.yes, c.no) for c in conditions} == expected
    assert set(flow().outcomes) == set(VERDICTS)


def test_numeric_threshold_is_on_the_few_labels_step() -> None:
    """Only step 5 (few labels) has a numeric rule, and its thresholds leave a gap to ask in."""
    numeric = [c for c in flow().conditions if c.numeric]
    assert [c.step for c in numeric] == [5]
    rule = numeric[0].numeric
    assert 0 < rule["yes_if_at_most"] < rule["no_if_at_least"]


@pytest.mark.parametrize("task", flow().tasks, ids=lambda t: t.id)
def test_task_conditions_walk_to_task_verdict(task) -> None:
    """Walking Figure 2 with the task's own conditions (everything else N) gives the task's verdict."""
    engine = DecisionEngine(flow())
    states = {c.id: ConditionState(c, task.conditions.get(c.id, False), "task") for c in flow().conditions}
    verdict, path = engine.walk(states)
    assert verdict == task.verdict, f"{task.id}: walk ends at step {path[-1].condition.step} with {verdict}"


def test_task_ids_unique_and_verdicts_valid() -> None:
    """Task ids are unique and every verdict is an outcome other than 'depends'."""
    ids = [t.id for t in flow().tasks]
    assert len(ids) == len(set(ids))
    assert {t.verdict for t in flow().tasks} <= {"llm", "fine_tuned", "neither"}


def test_considerations_favour_known_outcomes_or_caution() -> None:
    """A consideration favours an outcome or is only a 'caution', and has cue phrases."""
    for cons in flow().considerations:
        assert cons.favours in {"llm", "fine_tuned", "neither", "caution"}, cons.id
        assert cons.cues, cons.id


def test_load_flow_rejects_bad_routing(tmp_path: Path) -> None:
    """A yes/no branch that is no outcome is a KnowledgeError naming the file."""
    from bot.knowledge import KnowledgeError

    bad = (CORPUS / "decision_flow.toml").read_text(encoding="utf-8").replace('yes = "neither"', 'yes = "maybe"')
    path = tmp_path / "decision_flow.toml"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(KnowledgeError, match=re.escape(str(path))):
        load_flow(path)


# ---------------------------------------------------------------------------------------------- dev set
@lru_cache(maxsize=1)
def dev_items() -> list[dict]:
    lines = (CORPUS / "dev_set.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_dev_set_size_and_balance() -> None:
    """>=80 items, half Japanese half English, 20 held out."""
    items = dev_items()
    assert len(items) >= 80
    langs = [i["lang"] for i in items]
    assert langs.count("ja") == langs.count("en") == len(items) // 2
    assert sum(1 for i in items if i["split"] == "heldout") == 20


def test_dev_set_fields() -> None:
    """Unique ids; valid split/lang/kind; verdict only on decisions; abstain only off-topic; real sections."""
    all_sections = {s for secs in source_sections().values() for s in secs}
    problems, seen = [], set()
    for item in dev_items():
        iid = item.get("id")
        if not iid or iid in seen:
            problems.append(f"duplicate or missing id {iid!r}")
        seen.add(iid)
        if not str(item.get("question", "")).strip():
            problems.append(f"{iid}: empty question")
        if item.get("split") not in ("dev", "heldout"):
            problems.append(f"{iid}: split {item.get('split')!r}")
        if item.get("lang") not in LANGS or detect_language(item.get("question", "")) != item.get("lang"):
            problems.append(f"{iid}: lang {item.get('lang')!r} does not match the question")
        kind = item.get("kind")
        if kind not in ("decision", "content", "offtopic"):
            problems.append(f"{iid}: kind {kind!r}")
        verdict = item.get("expected_verdict")
        if (kind == "decision") != (verdict is not None) or (verdict is not None and verdict not in VERDICTS):
            problems.append(f"{iid}: expected_verdict {verdict!r} for kind {kind!r}")
        if not isinstance(item.get("expect_abstain"), bool) or item["expect_abstain"] != (kind == "offtopic"):
            problems.append(f"{iid}: expect_abstain {item.get('expect_abstain')!r} for kind {kind!r}")
        sections = item.get("expected_sections")
        if not isinstance(sections, list) or (kind != "offtopic") != bool(sections):
            problems.append(f"{iid}: expected_sections {sections!r} for kind {kind!r}")
        else:
            problems += [f"{iid}: unknown section {s!r}" for s in sections if s not in all_sections]
    assert not problems, "\n".join(problems)


def test_dev_set_covers_every_verdict_and_kind() -> None:
    """Both languages have decision, content and off-topic items; all four verdicts are expected somewhere."""
    items = dev_items()
    for lang in LANGS:
        assert {i["kind"] for i in items if i["lang"] == lang} == {"decision", "content", "offtopic"}
    assert {i["expected_verdict"] for i in items if i["kind"] == "decision"} == set(VERDICTS)


# ---------------------------------------------------------------------------------------------- copy guard
EN_RUN = 12  # consecutive words
JA_RUN = 25  # consecutive non-space characters containing Japanese
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")
_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _words(text: str) -> list[str]:
    return _WORD.findall(_norm(text))


def _squeeze(text: str) -> str:
    return _SPACE.sub("", _norm(text))


class ReferenceTexts:
    """Word 12-grams and Japanese 25-character windows of every file in ../shared/sources and ../shared/seed."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.en: dict[tuple[str, ...], str] = {}
        self.ja: dict[str, str] = {}
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            words = _words(text)
            for i in range(len(words) - EN_RUN + 1):
                self.en.setdefault(tuple(words[i : i + EN_RUN]), path.name)
            squeezed = _squeeze(text)
            for i in range(len(squeezed) - JA_RUN + 1):
                window = squeezed[i : i + JA_RUN]
                if _JAPANESE.search(window):
                    self.ja.setdefault(window, path.name)

    def copies(self, text: str) -> list[str]:
        """Copied runs in ``text``: 'source: run' for each maximal run found (one per start)."""
        found = []
        words = _words(text)
        i = 0
        while i <= len(words) - EN_RUN:
            source = self.en.get(tuple(words[i : i + EN_RUN]))
            if source:
                found.append(f"{source}: “{' '.join(words[i : i + EN_RUN])} …”")
                i += EN_RUN
            else:
                i += 1
        squeezed = _squeeze(text)
        i = 0
        while i <= len(squeezed) - JA_RUN:
            source = self.ja.get(squeezed[i : i + JA_RUN])
            if source:
                found.append(f"{source}: 「{squeezed[i : i + JA_RUN]}…」")
                i += JA_RUN
            else:
                i += 1
        return found


@pytest.fixture(scope="module")
def references() -> ReferenceTexts:
    folders = [SHARED / "sources", SHARED / "seed"]
    if not any(f.is_dir() for f in folders):
        pytest.skip(f"copy guard skipped: {SHARED}/sources and {SHARED}/seed are absent (no texts to compare)")
    files = sorted(p for f in folders if f.is_dir() for p in f.rglob("*") if p.is_file())
    if not files:
        pytest.skip(f"copy guard skipped: no files under {SHARED}/sources or {SHARED}/seed")
    return ReferenceTexts(files)


def test_copy_guard_catches_a_copied_sentence(references: ReferenceTexts) -> None:
    """The guard itself works: a run lifted from a reference file is flagged, our own wording is not."""
    text = max(references.files, key=lambda p: p.stat().st_size).read_text(encoding="utf-8", errors="replace")
    lifted = " ".join(_words(text)[200 : 200 + EN_RUN + 3])
    assert references.copies(f"As we say, {lifted}.")
    seed = SHARED / "seed" / "qiita_llm_or_finetuning_2023-12-05_ja.txt"
    if seed.is_file():
        squeezed = _squeeze(seed.read_text(encoding="utf-8"))
        start = next(m.start() for m in _JAPANESE.finditer(squeezed) if m.start() > 500)
        assert references.copies("前置き。" + squeezed[start : start + JA_RUN + 5])
    assert not references.copies("dotchi picks between a large language model and a small fine-tuned one "
                                 "by walking a ten step flow that we wrote down ourselves in plain words")


def test_cards_are_not_copied(references: ReferenceTexts) -> None:
    """No card shares 12+ consecutive words or 25+ consecutive Japanese characters with a source text."""
    problems = []
    for path, meta, body in cards():
        for hit in references.copies(f"{meta.get('title', '')}\n{body}"):
            problems.append(f"{path.relative_to(CARDS)}: {hit}")
    assert not problems, "copied text in cards:\n" + "\n".join(problems)


def test_flow_text_is_not_copied(references: ReferenceTexts) -> None:
    """The flow's description/finding/note/question/summary strings are our own words (figure_text exempt)."""
    stems = ("description_", "finding_", "note_", "question_", "summary_")
    data = flow_data()
    strings = [(f"{where}.{key}", value) for where, item in _flow_items() for key, value in item.items()
               if key.startswith(stems) and isinstance(value, str)]
    strings += [(f"outcomes.{oid}.{key}", value) for oid, o in data["outcomes"].items() for key, value in o.items()
                if key.startswith(stems)]
    assert len(strings) > 100
    problems = [f"{where}: {hit}" for where, value in strings for hit in references.copies(value)]
    assert not problems, "copied text in decision_flow.toml:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------- issue 10 fixes
def _card(lang: str, rel: str) -> tuple[dict, str]:
    """(front matter, body) of cards/<lang>/<rel>."""
    for path, meta, body in cards():
        if path == CARDS / lang / rel:
            return meta, body
    raise AssertionError(f"no card {lang}/{rel}")


def test_mmlu_card_says_57_subjects() -> None:
    """The English 4.3.1 card gives MMLU's 57 subjects, not 'more than 57'."""
    _, body = _card("en", f"{SURVEY}/4.3.1-knowledge-use.md")
    assert re.search(r"\b57 subjects\b", body)
    assert not re.search(r"\b(more|over) than 57\b", body)


@pytest.mark.parametrize("lang", LANGS)
def test_seed_table_card_names_the_article_glosses(lang: str) -> None:
    """The Qiita seed-table card quotes row 2's 「推論、論理的能力」 and the article's 「20B以下」 (survey: < 20B)."""
    _, body = _card(lang, "qiita2023seed/decision-table.md")
    missing = [gloss for gloss in ("推論、論理的能力", "20B以下") if gloss not in body]
    assert not missing, missing


def test_mnist_ascii_is_not_an_alias_of_contradicted_knowledge() -> None:
    """Mnist ascii is survey 4.3.2's case of useless world knowledge, not of knowledge contradicting the real world."""
    task = next(t for t in flow_data()["tasks"] if t["id"] == "counterfactual_knowledge")
    names = task.get("names_en", []) + task.get("names_ja", [])
    assert not [name for name in names if "mnist" in name.lower()]


@pytest.mark.parametrize("lang", LANGS)
def test_few_labels_card_gives_the_flow_thresholds_as_rule_of_thumb(lang: str) -> None:
    """The few-labels card names step 5's label thresholds and calls them the project's rule of thumb."""
    rule = next(c for c in flow_data()["conditions"] if c["id"] == "few_labels")["numeric"]
    _, body = _card(lang, f"{SURVEY}/3.2-few-annotated.md")
    numbers = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", body)}
    assert {rule["yes_if_at_most"], rule["no_if_at_least"]} <= numbers
    assert ("rule of thumb" if lang == "en" else "経験則") in body


# A deprecated variant that is part of another, unrelated word: 整合性 (consistency) is fine.
GLOSSARY_ALLOWED = {"整合": ("整合性",)}


def glossary_variants() -> dict[str, str]:
    """Deprecated Japanese variant -> the term to use, read from the glossary table in corpus/README.md."""
    text = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert "## Japanese glossary" in text, "corpus/README.md has no Japanese glossary"
    section = text.split("## Japanese glossary", 1)[1].split("\n## ", 1)[0]
    variants = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3:
            for variant in re.findall(r"`([^`]+)`", cells[2]):
                variants[variant] = cells[1]
    return variants


def test_japanese_cards_use_the_glossary() -> None:
    """No Japanese card title or body uses a variant the glossary in corpus/README.md deprecates."""
    variants = glossary_variants()
    assert len(variants) >= 10 and "ファインチューニング済み" in variants and "整合" in variants
    problems = []
    for path, meta, body in cards():
        if path.relative_to(CARDS).parts[0] != "ja":
            continue
        text = f"{meta.get('title', '')}\n{body}"
        for variant, use in variants.items():
            checked = text
            for allowed in GLOSSARY_ALLOWED.get(variant, ()):
                checked = checked.replace(allowed, "")
            if variant in checked:
                problems.append(f"{path.relative_to(CARDS)}: 「{variant}」 -> 「{use}」")
    assert not problems, "deprecated Japanese terms (see the glossary in corpus/README.md):\n" + "\n".join(problems)


# -------------------------------------------------------------------------------------- task catalog, 2nd edition
# The practitioners' tasks of the knowledge base's second edition, with the Figure 2 conditions each task type settles
# by itself. Labelled reading data uses these ids, so ids and settled conditions are pinned here.
NEW_TASKS: dict[str, dict[str, bool]] = {
    "rag_assistant": {"mimic_human": True},
    "code_completion": {"creative_generation": True},
    "text_to_sql": {"creative_generation": True},
    "json_extraction": {"creative_generation": False, "knowledge_intensive": False},
    "intent_slot_filling": {"creative_generation": False, "knowledge_intensive": False},
    "pii_redaction": {"creative_generation": False, "knowledge_intensive": False},
    "proofreading": {"creative_generation": False, "knowledge_intensive": False},
    "style_conversion": {"creative_generation": False, "knowledge_intensive": False},
    "query_rewriting": {"creative_generation": False, "knowledge_intensive": False},
    "speech_recognition": {"far_from_lm": True},
    "ocr_document_understanding": {"far_from_lm": True},
    "semantic_search": {"far_from_lm": True},
    "reranking": {"knowledge_intensive": False},
    "recommendation": {"far_from_lm": True},
    "time_series_forecasting": {"far_from_lm": True},
    "tabular_prediction": {"far_from_lm": True},
    "tool_use_agent": {"multi_task": True, "needs_scaling": True},
    "llm_distillation": {},
    "peft_open_llm": {},
}
GENERIC_NEW_TASKS = {"llm_distillation", "peft_open_llm"}


def _alias_in(alias: str, text: str) -> bool:
    """ASCII aliases count as whole words (how the engine matches them); Japanese ones as substrings."""
    if alias.isascii():
        return re.search(rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])", text) is not None
    return alias in text


def test_new_catalog_tasks_exist_with_settled_conditions() -> None:
    """>= 18 new task ids exist, each settles exactly its given conditions; the two generic ones are generic."""
    tasks = {t.id: t for t in flow().tasks}
    assert len(NEW_TASKS) >= 18
    missing = sorted(set(NEW_TASKS) - set(tasks))
    assert not missing, f"new catalog tasks missing: {missing}"
    wrong = {tid: tasks[tid].conditions for tid, conds in NEW_TASKS.items() if tasks[tid].conditions != conds}
    assert not wrong, f"settled conditions differ from the agreed ones: {wrong}"
    assert {tid for tid in NEW_TASKS if tasks[tid].generic} == GENERIC_NEW_TASKS
    for tid in NEW_TASKS:
        for lang in LANGS:
            names = tasks[tid].names[lang]
            assert 4 <= len(names) <= 10, f"{tid}: {len(names)} names_{lang}"
    raw = {t["id"]: t for t in flow_data()["tasks"]}
    upper = [f"{tid}: {n!r}" for tid in NEW_TASKS for n in raw[tid]["names_en"] if n != n.lower()]
    assert not upper, f"English aliases must be lower-case: {upper}"


def test_every_task_states_provenance_and_finding_covers() -> None:
    """Every task says `provenance` (survey|flow) and `finding_covers` explicitly; 'flow' findings admit that the survey
    did not evaluate the task; the survey's own tasks are 'survey'."""
    problems = []
    for t in flow_data()["tasks"]:
        for key in ("provenance", "finding_covers"):
            if key not in t:
                problems.append(f"{t['id']}: no {key}")
    for task in flow().tasks:
        assert task.provenance in ("survey", "flow"), task.id
        if task.provenance == "flow":
            if "not evaluate" not in task.finding["en"]:
                problems.append(f"{task.id}: provenance 'flow', but finding_en does not say the survey skipped it")
            if "評価されて" not in task.finding["ja"]:
                problems.append(f"{task.id}: provenance 'flow', but finding_ja does not say so either")
    survey_own = [t.id for t in flow().tasks if t.id not in NEW_TASKS and t.provenance != "survey"]
    problems += [f"{tid}: one of the survey's own tasks, but provenance is not 'survey'" for tid in survey_own]
    assert sum(1 for t in flow().tasks if t.id in NEW_TASKS and t.provenance == "flow") >= 10
    assert not problems, "\n".join(problems)


def test_finding_covers_name_conditions_and_are_documented() -> None:
    """finding_covers lists condition ids; each non-empty list has a TOML comment right above it; the product
    decision's two examples hold (toxicity covers few labels, sentiment covers nothing)."""
    cond_ids = {c.id for c in flow().conditions}
    tasks = {t.id: t for t in flow().tasks}
    for task in flow().tasks:
        assert set(task.finding_covers) <= cond_ids, task.id
    assert "few_labels" in tasks["toxicity"].finding_covers
    assert tasks["sentiment"].finding_covers == ()
    assert tasks["rich_resource_mt"].finding_covers == ()
    lines = (CORPUS / "decision_flow.toml").read_text(encoding="utf-8").splitlines()
    undocumented = []
    current = None
    for i, line in enumerate(lines):
        if line.startswith("id = "):
            current = line.split('"')[1]
        non_empty = line.startswith("finding_covers = ") and line.strip() != "finding_covers = []"
        if non_empty and not lines[i - 1].startswith("#"):
            undocumented.append(current)
    assert not undocumented, f"non-empty finding_covers without a comment: {undocumented}"


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [("provenance", 'provenance = "rumour"', 'provenance = "flow"'),
     ("finding_covers", 'finding_covers = ["no_such_condition"]', "finding_covers = []")],
)
def test_load_flow_rejects_bad_provenance_and_covers(tmp_path: Path, field: str, bad: str, good: str) -> None:
    """An unknown provenance, or a finding_covers entry that is no condition id, is a KnowledgeError naming the file
    and the field."""
    from bot.knowledge import KnowledgeError

    text = (CORPUS / "decision_flow.toml").read_text(encoding="utf-8")
    line = re.compile(rf"^{re.escape(good)}$", re.M)
    assert line.search(text)
    path = tmp_path / "decision_flow.toml"
    path.write_text(line.sub(bad, text, count=1), encoding="utf-8")
    with pytest.raises(KnowledgeError, match=re.escape(str(path)) + ".*" + field):
        load_flow(path)


# Intended overlaps: a short alias inside a longer alias of another task, where the longer (more specific) alias is
# the right match and wins as the longest match. Keyed by the contained alias; each entry names where it may occur.
ALIAS_OVERLAPS_ALLOWED: dict[str, tuple[set[str], str]] = {
    "translation": ({"low_resource_mt", "extremely_low_resource_mt", "nlg_evaluation"},
                    "bare 'translation' is rich-resource MT; low-resource, Kazakh, quality-rating aliases are longer"),
    "machine translation": ({"low_resource_mt", "extremely_low_resource_mt"}, "same: '(extremely) low-resource ...'"),
    "翻訳": ({"low_resource_mt", "extremely_low_resource_mt", "nlg_evaluation"}, "same as 'translation', in Japanese"),
    "low-resource translation": ({"extremely_low_resource_mt"}, "'extremely low-resource' is its own task"),
    "low-resource machine translation": ({"extremely_low_resource_mt"}, "same"),
    "低資源言語の翻訳": ({"extremely_low_resource_mt"}, "「極低資源」 is its own task"),
    "低リソース言語の翻訳": ({"extremely_low_resource_mt"}, "「超低リソース」 is its own task"),
    "chatbot": ({"rag_assistant"}, "a chatbot over one's documents is the more specific RAG assistant (both LLM)"),
    "チャットボット": ({"rag_assistant"}, "same, in Japanese"),
    "text classification": ({"misc_text_classification"}, "'miscellaneous text classification' is the LLM case"),
    "topic classification": ({"misc_text_classification"}, "'diverse topic classification', same"),
    "テキスト分類": ({"misc_text_classification"}, "「雑多なテキスト分類」, same"),
    "nli": ({"adversarial_ood_nlu"}, "adversarial NLI (ANLI) is the survey's separate LLM case"),
    "summary": ({"nlg_evaluation"}, "'summary quality scoring' is evaluating summaries, not writing them"),
    "要約": ({"nlg_evaluation"}, "「要約の品質評価」, same"),
}


def test_task_aliases_do_not_collide() -> None:
    """No alias of one task occurs inside another task's alias (whole words for ASCII), except the listed overlaps."""
    tasks = flow().tasks
    collisions, used = [], set()
    for task in tasks:
        for alias in task.all_names:
            for other in tasks:
                if other.id == task.id:
                    continue
                for name in other.all_names:
                    if not _alias_in(alias, name):
                        continue
                    allowed = ALIAS_OVERLAPS_ALLOWED.get(alias)
                    if allowed and other.id in allowed[0]:
                        used.add(alias)
                    else:
                        collisions.append(f"{task.id}: {alias!r} inside {other.id}: {name!r}")
    assert not collisions, "alias collisions:\n" + "\n".join(sorted(set(collisions)))
    stale = sorted(set(ALIAS_OVERLAPS_ALLOWED) - used)
    assert not stale, f"allow-list entries that no longer overlap (remove them): {stale}"


def _named_task(phrase: str) -> str | None:
    """The task whose alias is the longest match inside ``phrase``."""
    best = max(((len(a), t.id) for t in flow().tasks for a in t.all_names if _alias_in(a, phrase.lower())),
               default=None)
    return best[1] if best else None


def test_translation_aliases_do_not_depend_on_direction() -> None:
    """Both directions of Japanese-English translation, however written, name one and the same task."""
    phrases = ["日英翻訳", "日本語から英語への翻訳", "英日翻訳", "英語から日本語への翻訳",
               "japanese to english translation", "english-japanese translation"]
    named = {p: _named_task(p) for p in phrases}
    assert len(set(named.values())) == 1 and None not in named.values(), named
    assert _named_task("英語からカザフ語への翻訳") == "extremely_low_resource_mt"
    assert _named_task("romanian to english translation") == "low_resource_mt"


def test_rag_chatbot_is_not_extractive_or_context_qa() -> None:
    """A chatbot over manuals is the RAG assistant (step 1 → LLM); context-only QA keeps no chat/RAG-generic aliases."""
    tasks = {t.id: t for t in flow().tasks}
    assert not {"rag", "company wiki", "社内wiki", "検索拡張生成"} & set(tasks["context_only_qa"].all_names)
    for phrase in ("rag chatbot for our product manuals", "社内wikiを参照するチャットボットを作りたい"):
        assert _named_task(phrase) == "rag_assistant", phrase
    assert tasks["rag_assistant"].verdict == "llm" and tasks["context_only_qa"].verdict == "fine_tuned"
