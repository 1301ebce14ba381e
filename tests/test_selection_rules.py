"""``benchmarks/selection_rules.py``: a finished evaluation re-scored under other strength rules, without generating."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark


def _cell(factor, selection, report, fluency=2.0):
    ratings = {"concept": 1.0, "instruction": 1.0, "fluency": fluency}
    return {"factor": factor, "selection": {**ratings, "score": selection}, "report": {**ratings, "score": report},
            "collapsed": False, "top_output_share": 0.0}


def _evaluation(tmp_path):
    """Two concepts; a vector method with factors 1 and 2, and prompt steering (no factor)."""
    tmp_path.mkdir(exist_ok=True)
    concepts = []
    for cid, cells, chosen in (("a", [_cell(1.0, 0.2, 0.4, 1.8), _cell(2.0, 0.3, 0.1, 1.2)], 2.0),
                               ("b", [_cell(1.0, 0.1, 0.5, 1.9), _cell(2.0, 0.0, 0.2, 1.6)], 1.0)):
        report = next(c["report"] for c in cells if c["factor"] == chosen)
        concepts.append({"method": "vec", "concept_id": cid, "chosen_factor": chosen, "report": report, "cells": cells})
        prompt = _cell(None, 0.6, 0.5)
        concepts.append({"method": "prompt", "concept_id": cid, "chosen_factor": None, "report": prompt["report"],
                         "cells": [prompt]})
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"config": {}, "concepts": concepts}))
    return folder


def test_every_rule_scores_what_it_names(tmp_path):
    bench = load_benchmark("selection_rules")
    report = bench.main(["--evaluation", str(_evaluation(tmp_path)), "--out", str(tmp_path / "out"),
                         "--coherence-targets", "1.5"])
    rows = {r["rule"]: r["per_concept"] for r in report["rows"] if r["method"] == "vec"}
    assert rows["protocol"] == {"a": 0.1, "b": 0.5}  # the saved choice (selection 0.3 > 0.2; 0.1 > 0.0)
    assert report["protocol_reproduced"]
    assert rows["fixed 1"] == {"a": 0.4, "b": 0.5} and rows["fixed 2"] == {"a": 0.1, "b": 0.2}
    assert rows["pooled (1)"] == rows["fixed 1"]  # pooled selection: factor 1 0.15, factor 2 0.15 -> first wins
    assert rows["coherence 1.5"] == {"a": 0.4, "b": 0.2}  # largest factor with selection fluency >= 1.5
    assert rows["best of all"] == pytest.approx({"a": 0.3, "b": 0.3})  # max over factors of the two halves' mean
    prompt_rows = {r["rule"]: r for r in report["rows"] if r["method"] == "prompt"}
    assert prompt_rows == {}  # the baseline is not re-scored against itself
    protocol = next(r for r in report["rows"] if r["method"] == "vec" and r["rule"] == "protocol")
    assert protocol["minus_baseline"]["mean"] == pytest.approx((0.1 + 0.5) / 2 - 0.5)
    assert protocol["minus_share"]["mean"] == pytest.approx((0.1 + 0.5) / 2 - 0.45)
    best = next(r for r in report["rows"] if r["method"] == "vec" and r["rule"] == "best of all")
    assert best["minus_baseline"]["mean"] == pytest.approx(0.3 - 0.55)  # prompt on both halves
    assert "best of all" in (tmp_path / "out" / "results.md").read_text()


def test_each_rule_reports_answer_length_at_the_factors_it_picked(tmp_path):
    bench = load_benchmark("selection_rules")
    folder = _evaluation(tmp_path)
    answers = {("vec", 1.0): "two words", ("vec", 2.0): "now four words here", ("none", None): "one two three four"}
    generations = [{"method": method, "concept_id": cid, "prompt_id": "p", "half": half, "factor": factor,
                    "output": text if half == "report" else "selection answers are never counted at all"}
                   for (method, factor), text in answers.items() for cid in ("a", "b") for half in ("selection", "report")]
    (folder / "generations.json").write_text(json.dumps(generations))
    report = bench.main(["--evaluation", str(folder), "--out", str(tmp_path / "out")])
    ratio = {r["rule"]: r["answer_words"] and r["answer_words"]["ratio"] for r in report["rows"]}
    assert ratio["fixed 1"] == pytest.approx(0.5) and ratio["fixed 2"] == pytest.approx(1.0)
    assert ratio["protocol"] == pytest.approx((4 + 2) / 2 / 4)  # a at factor 2, b at factor 1
    assert ratio["best of all"] is None  # its factor was picked on both halves: no report-half length
    assert "words ÷ unsteered" in (tmp_path / "out" / "results.md").read_text()
    (folder / "generations.json").unlink()
    assert all(r["answer_words"] is None for r in bench.main(["--evaluation", str(folder), "--out",
                                                                str(tmp_path / "bare")])["rows"])


def test_several_evaluations_pool_their_concepts_each_paired_with_its_own_baseline(tmp_path):
    bench = load_benchmark("selection_rules")
    first = _evaluation(tmp_path / "one")
    second = _evaluation(tmp_path / "two")
    saved = json.loads((second / "results.json").read_text())
    for entry in saved["concepts"]:
        if entry["method"] == "prompt":
            entry["report"] = {**entry["report"], "score": 0.1}
    saved["concepts"].append({**saved["concepts"][0], "method": "only-here"})
    (second / "results.json").write_text(json.dumps(saved))
    report = bench.main(["--evaluation", str(first), str(second), "--out", str(tmp_path / "out")])
    assert report["n_concepts"] == 4 and report["protocol_reproduced"]
    assert {r["method"] for r in report["rows"]} == {"vec"}  # only-here is not in every evaluation
    protocol = next(r for r in report["rows"] if r["rule"] == "protocol")
    assert protocol["per_concept"] == {"0:a": 0.1, "0:b": 0.5, "1:a": 0.1, "1:b": 0.5}
    assert protocol["minus_baseline"]["mean"] == pytest.approx(0.3 - (0.5 + 0.5 + 0.1 + 0.1) / 4)
    assert "pooled" in {r["rule"] for r in report["rows"]}
    with pytest.raises(SystemExit):
        bench.main(["--evaluation", str(first), str(second), "--out", str(tmp_path / "out2"), "--methods", "only-here"])
    with pytest.raises(SystemExit):
        bench.main(["--evaluation", str(first), str(first), "--out", str(tmp_path / "out3")])
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_other_sets_rule_takes_each_sets_factor_from_the_other_sets_only(tmp_path):
    bench = load_benchmark("selection_rules")
    first = _evaluation(tmp_path / "one")  # both halves: factor 1 mean 0.30, factor 2 mean 0.15 -> set two uses 1
    second = _evaluation(tmp_path / "two")
    saved = json.loads((second / "results.json").read_text())
    for entry in saved["concepts"]:
        if entry["method"] == "vec":  # set two favours factor 2 on both halves -> set one uses 2
            entry["cells"] = [_cell(1.0, 0.0, 0.05), _cell(2.0, 0.6, 0.7)]
    (second / "results.json").write_text(json.dumps(saved))
    report = bench.main(["--evaluation", str(first), str(second), "--out", str(tmp_path / "out")])
    other = next(r for r in report["rows"] if r["rule"] == "other sets")
    assert report["other_sets_factors"] == {"vec": [2.0, 1.0]}
    assert other["per_concept"] == {"0:a": 0.1, "0:b": 0.2, "1:a": 0.05, "1:b": 0.05}  # never its own best factor
    assert "other sets" in (tmp_path / "out" / "results.md").read_text()
    single = bench.main(["--evaluation", str(first), "--out", str(tmp_path / "single")])
    assert "other sets" not in {r["rule"] for r in single["rows"]}  # one set has no other set to learn from
    with pytest.raises(ValueError, match="two evaluations"):
        bench.other_sets_picks([[]])
    # --both-halves: the rules that never see a concept's own scores, also on both halves (prompt steering too)
    both = bench.main(["--evaluation", str(first), str(second), "--out", str(tmp_path / "both"), "--both-halves"])
    rows = {r["rule"]: r for r in both["rows"]}
    assert rows["other sets, both halves"]["per_concept"] == pytest.approx(
        {"0:a": 0.2, "0:b": 0.1, "1:a": 0.025, "1:b": 0.025})  # factors 2 and 1 as above, mean of the two halves
    assert rows["fixed 1, both halves"]["minus_baseline"]["mean"] == pytest.approx((0.3 + 0.3 + 0.025 + 0.025) / 4 - 0.55)
    assert "protocol, both halves" not in rows and "other sets, both halves" not in {
        r["rule"] for r in report["rows"]}  # only on request, and never for a rule that saw the concept's scores
    against_vec = bench.main(["--evaluation", str(second), "--out", str(tmp_path / "vs-vec"), "--baseline", "vec"])
    assert against_vec["baseline_scores"]["both halves"]["mean"] == pytest.approx(0.65)  # its best factor, not the first
    # a baseline with factors is taken under each row's own rule
    saved["concepts"] += [{**e, "method": "twin", "cells": [_cell(1.0, 0.0, 0.25), _cell(2.0, 0.6, 0.5)]}
                          for e in saved["concepts"] if e["method"] == "vec"]
    (second / "results.json").write_text(json.dumps(saved))
    twin = {r["rule"]: r["minus_baseline"]["mean"] for r in bench.main(
        ["--evaluation", str(second), "--out", str(tmp_path / "twin"), "--baseline", "vec", "--methods", "twin"])["rows"]}
    assert twin["fixed 1"] == pytest.approx(0.25 - 0.05) and twin["fixed 2"] == pytest.approx(0.5 - 0.7)
    assert twin["best of all"] == pytest.approx(0.55 - 0.65)
    assert "under each row's rule" in (tmp_path / "twin" / "results.md").read_text()


def test_a_real_evaluation_is_reproduced_by_the_protocol_rule(tmp_path):
    forms = load_benchmark("oracle_forms")
    forms.main(["--tiny", "--out", str(tmp_path / "run"), "--forms", "2:all"])
    report = load_benchmark("selection_rules").main(["--evaluation", str(tmp_path / "run" / "evaluation"),
                                                     "--out", str(tmp_path / "rules")])
    assert report["protocol_reproduced"] and {r["method"] for r in report["rows"]} == {"none", "oracle-L2-all"}


@pytest.mark.parametrize(("flags", "message"), [
    (["--evaluation", "{tmp}/missing"], "has no results.json"),
    (["--coherence-targets", "3"], "--coherence-targets"),
    (["--share", "0"], "--share"),
    (["--out", "{tmp}/evaluation"], "must not be the evaluation folder"),
    (["--baseline", "oracle"], "--baseline 'oracle' is not in every evaluation"),
    (["--methods", "nope"], "methods not in every evaluation: nope"),
])
def test_bad_input_stops_with_one_error_and_writes_nothing(tmp_path, capsys, flags, message):
    bench = load_benchmark("selection_rules")
    folder = _evaluation(tmp_path)
    before = (folder / "results.json").read_text()
    argv = ["--evaluation", str(folder), "--out", str(tmp_path / "out")] + [f.format(tmp=tmp_path) for f in flags]
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "selection_rules: error:" in err[-1]
    assert not (tmp_path / "out").exists() and (folder / "results.json").read_text() == before
