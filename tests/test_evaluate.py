"""bot.evaluate: metrics and report on hand-made results, dev-set loading errors, and a small real run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.evaluate import Result, covers, load_items, main, metrics, report, run
from ingest.config import Settings


def item(**fields) -> dict:
    base = {"id": "x", "split": "dev", "lang": "en", "kind": "content", "question": "q", "expected_verdict": None,
            "expected_sections": [], "expect_abstain": False}
    base.update(fields)
    return base


def result(it: dict, verdict=None, abstained=False, language="en", sections=(), invalid=0, seconds=0.1) -> Result:
    return Result(it, verdict, abstained, language, list(sections), invalid, seconds)


# ---------------------------------------------------------------------------------------------- key points
POINTS = [{"en": ["masked language model"], "ja": ["マスク言語モデル"]},
          {"en": ["RoBERTa"], "ja": []},
          {"en": ["encoder-only"], "ja": ["エンコーダ"]}]


def test_key_point_phrasings_either_language_case_and_width() -> None:
    """Any phrasing of either language counts, case- and width-insensitively; the sources list does not."""
    answer = ("BERT系は**ＭＡＳＫＥＤ Language Model**で学習します。例: ｒｏｂｅｒｔａ [1]"
              "\n\n**出典**\n- [1] encoder-only")
    assert [covers(answer, p) for p in POINTS] == [True, True, False]
    assert covers("エンコーダのみの構造 [1]", POINTS[2])


def test_key_point_coverage_metric() -> None:
    """Coverage is covered/listed points over content answers that list them; decisions and plain items are out."""
    full = Result(item(key_points=POINTS), None, False, "en", ["2.1"], 0, 0.1, "encoder-only RoBERTa, masked LM")
    full.answer += "; masked language model"
    part = Result(item(key_points=POINTS[:2]), None, False, "en", ["2.1"], 0, 0.1, "RoBERTa")
    other = Result(item(kind="decision", key_points=POINTS), "llm", False, "en", [], 0, 0.1, "RoBERTa")
    assert (full.key_points, part.key_points, other.key_points) == ((3, 3), (1, 2), None)
    m = metrics([full, part, other, result(item())])
    assert m["key_point_coverage"] == pytest.approx(4 / 5) and m["key_points_all"] == 0.5
    assert metrics([result(item())])["key_point_coverage"] is None


# ---------------------------------------------------------------------------------------------- section hits
@pytest.mark.parametrize(("expected", "cited", "hit"), [
    (["4.1"], ["4.1.1"], True),  # a subsection counts for its section
    (["4.1"], ["4.1"], True),
    (["4.1.1"], ["4.1"], False),  # the parent does not count for a subsection
    (["4.1"], ["4.2"], False),
    (["4.1"], ["4.10"], False),  # a prefix that is not a subsection
    (["4.1", "5.1"], ["2", "5.1"], True),
    (["4.1"], [], False),
])
def test_section_hit(expected: list[str], cited: list[str], hit: bool) -> None:
    """section_hit: any cited section equal to or under an expected one."""
    assert result(item(expected_sections=expected), sections=cited).section_hit is hit


def test_section_hit_not_scored_without_expectation() -> None:
    """No expected sections, or an abstention item → not scored (None)."""
    assert result(item(), sections=["4.1"]).section_hit is None
    assert result(item(expected_sections=["4.1"], expect_abstain=True), sections=["4.1"]).section_hit is None


def test_verdict_ok_only_for_decisions() -> None:
    """verdict_ok compares verdicts for decision items and is None for the rest."""
    decision = item(kind="decision", expected_verdict="llm")
    assert result(decision, verdict="llm").verdict_ok is True
    assert result(decision, verdict="depends").verdict_ok is False
    assert result(item(), verdict="llm").verdict_ok is None


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics_rates() -> None:
    """Verdict accuracy, section hit rate, abstention precision/recall, language match, invalid citations."""
    off = item(kind="offtopic", expect_abstain=True)
    results = [
        result(item(kind="decision", expected_verdict="llm", expected_sections=["4.1"]), "llm", sections=["4.1.2"]),
        result(item(kind="decision", expected_verdict="fine_tuned", expected_sections=["4.1"]), "llm",
               sections=["4.2"], invalid=2),
        result(off, abstained=True),  # correct abstention
        result(off, abstained=False, sections=["4.1"]),  # missed abstention
        result(item(expected_sections=["5.1"]), abstained=True),  # false abstention
        result(item(lang="ja", expected_sections=["5.1"]), language="en", sections=["5.1"]),
    ]
    m = metrics(results)
    assert m["n"] == 6
    assert m["verdict_accuracy"] == 0.5
    assert m["section_hit_rate"] == pytest.approx(2 / 4, abs=1e-4)  # hit, miss, (abstained: miss), hit
    assert m["abstention_precision"] == 0.5  # 2 abstained, 1 should have
    assert m["abstention_recall"] == 0.5  # 2 should have, 1 did
    assert m["false_abstentions"] == 1
    assert m["language_match"] == pytest.approx(5 / 6, abs=1e-4)
    assert m["invalid_citations"] == 2


def test_metrics_none_when_nothing_to_score() -> None:
    """Rates without any scored item are None, not 0 or a division error."""
    m = metrics([result(item())])
    assert m["verdict_accuracy"] is None and m["abstention_precision"] is None and m["abstention_recall"] is None
    assert m["section_hit_rate"] is None
    assert metrics([])["n"] == 0


def test_metrics_latency_percentiles() -> None:
    """Latency percentiles are in milliseconds."""
    m = metrics([result(item(), seconds=s) for s in (0.1, 0.2, 0.3, 0.4, 1.0)])
    assert m["latency_ms_p50"] == pytest.approx(300.0)
    assert 400.0 < m["latency_ms_p95"] <= 1000.0


def test_report_splits_and_languages() -> None:
    """report() groups by split (all/dev/heldout) and language, and skips empty groups."""
    results = [result(item(lang="en", split="dev")), result(item(lang="ja", split="dev"), language="ja"),
               result(item(lang="en", split="heldout"))]
    rep = report(results)
    assert set(rep) == {"all", "dev", "heldout"}
    assert rep["all"]["overall"]["n"] == 3 and rep["dev"]["overall"]["n"] == 2
    assert set(rep["heldout"]) == {"overall", "en"}
    assert rep["dev"]["ja"]["n"] == 1 and rep["dev"]["en"]["n"] == 1
    assert "heldout" not in report([result(item(split="dev"))])


# ---------------------------------------------------------------------------------------------- loading
def test_load_items_reads_jsonl_and_skips_blank_lines(tmp_path: Path) -> None:
    """Valid lines load in order; blank lines are skipped."""
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "a"}\n\n   \n{"question": "b", "lang": "ja"}\n', encoding="utf-8")
    assert [i["question"] for i in load_items(path)] == ["a", "b"]


@pytest.mark.parametrize(("bad", "message"), [('{"question": "ok"', "not valid JSON"),
                                              ('{"lang": "en"}', "missing field 'question'")])
def test_load_items_names_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    """A bad line is reported as FILE:LINE with the reason."""
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "fine"}\n\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        load_items(path)


def test_main_reports_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bot eval` on a broken file exits 2 with the file:line message on stderr (before loading any model)."""
    path = tmp_path / "broken.jsonl"
    path.write_text("not json\n", encoding="utf-8")
    settings = Settings(_env_file=None, store_path=tmp_path / "store", corpus_dir=tmp_path)
    assert main(settings, path, "all", as_json=False, failures=False) == 2
    assert f"{path}:1:" in capsys.readouterr().err


def test_run_on_real_service(bot_service) -> None:
    """run() on a few dev-set style items: one Result each, valid citations, the expected verdicts."""
    items = [item(kind="decision", lang="ja", expected_verdict="fine_tuned", expected_sections=["4.1"],
                  question="感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？"),
             item(kind="offtopic", expect_abstain=True, question="What's the weather in Tokyo tomorrow?")]
    seen: list[tuple[str, int]] = []
    results = run(bot_service, items, before_each=lambda q: seen.append((q, len(seen))))
    assert seen == [(items[0]["question"], 0), (items[1]["question"], 1)]  # each question, before its answer
    assert len(results) == 2
    assert results[0].verdict_ok is True and results[0].section_hit is True and results[0].invalid == 0
    assert results[1].abstained and results[1].sections == []
    m = metrics(results)
    assert m["abstention_precision"] == 1.0 and m["abstention_recall"] == 1.0
