"""Answer length counted in tokens: :func:`hooksteer.generation.record_answers` and ``benchmarks/answer_length.py``
(long greedy answers regenerated for a finished oracle_forms run, which is only read)."""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch
from benchmark_scripts import load_benchmark

from hooksteer import generation
from hooksteer.generation import GeneratedAnswer, generate_texts, record_answers


def _fake_rows(eos: int):
    """Two rows as the generation loop returns them: one that wrote EOS after two tokens (then padding), one cut
    at the limit."""
    return [torch.tensor([5, 6, eos, eos]), torch.tensor([5, 6, 7, 8])]


def test_recorded_answers_count_tokens_before_eos_and_say_whether_it_came(tiny_llama, monkeypatch):
    eos = tiny_llama.tokenizer.eos_token_id
    monkeypatch.setattr(generation, "generate_tokens", lambda *a, **k: _fake_rows(eos))
    with record_answers() as recorded:
        texts = generate_texts(tiny_llama, ["Hi", "Hello"], max_new_tokens=4)
    assert [(a.n_tokens, a.ended) for a in recorded] == [(2, True), (4, False)]
    assert [a.text for a in recorded] == texts
    assert texts[0] == tiny_llama.tokenizer.decode([5, 6], skip_special_tokens=True).strip()


def test_recording_nests_stops_at_the_block_and_after_errors(tiny_llama, monkeypatch):
    eos = tiny_llama.tokenizer.eos_token_id
    monkeypatch.setattr(generation, "generate_tokens", lambda *a, **k: _fake_rows(eos))
    with record_answers() as outer:
        generate_texts(tiny_llama, ["a", "b"], max_new_tokens=4)
        with record_answers() as inner:
            generate_texts(tiny_llama, ["c", "d"], max_new_tokens=4)
    generate_texts(tiny_llama, ["e", "f"], max_new_tokens=4)  # after the blocks: recorded nowhere
    assert len(outer) == 4 and len(inner) == 2
    with pytest.raises(RuntimeError), record_answers() as failed:
        raise RuntimeError("boom")
    generate_texts(tiny_llama, ["g", "h"], max_new_tokens=4)
    assert failed == [] and getattr(generation._RECORDING, "stack", []) == []


def test_recording_is_per_thread(tiny_llama, monkeypatch):
    eos = tiny_llama.tokenizer.eos_token_id
    monkeypatch.setattr(generation, "generate_tokens", lambda *a, **k: _fake_rows(eos))
    with record_answers() as mine:
        other = threading.Thread(target=lambda: generate_texts(tiny_llama, ["x", "y"], max_new_tokens=4))
        other.start()
        other.join()
    assert mine == []


def test_real_generation_records_what_it_returns(tiny_llama):
    with record_answers() as recorded:
        texts = generate_texts(tiny_llama, ["Hi", "Tell me more"], max_new_tokens=5, stop_at_eos=False)
    assert recorded == [GeneratedAnswer(t, 5, False) for t in texts]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny oracle_forms run with a fit-only A-PSR (FitSteer) per concept."""
    out = tmp_path_factory.mktemp("run") / "of"
    load_benchmark("oracle_forms").main(["--tiny", "--out", str(out), "--forms", "--apsr", "0-2:local0:steps0"])
    return out


def _digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_long_answers_are_counted_per_method_and_agree_with_the_saved_evaluation(tiny_run, tmp_path):
    bench = load_benchmark("answer_length")
    before = _digest(tiny_run)
    report = bench.main(["--tiny", "--run", str(tiny_run), "--psr", "apsr-L0-2-local0-steps0", "--alphas", "1", "4",
                         "--max-new-tokens", "12", "--out", str(tmp_path / "out")])
    assert _digest(tiny_run) == before  # the run is only read
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["none", "prompt", "apsr-L0-2-local0-steps0@1", "apsr-L0-2-local0-steps0@4"]
    import json

    answers = json.loads((tmp_path / "out" / "answers.json").read_text())
    assert {a["method"] for a in answers} == set(rows)
    for a in answers:
        assert 0 <= a["tokens"] <= 12 and (a["ended"] or a["tokens"] == 12)
        assert a["agrees_with_saved"] is True  # greedy: the saved 4-token answer starts the 12-token one
    none = [a for a in answers if a["method"] == "none"]
    assert rows["none"]["tokens"]["mean"] == pytest.approx(sum(a["tokens"] for a in none) / len(none))
    assert rows["none"]["minus_none_tokens"]["mean"] == 0 and rows["none"]["tokens_ratio"] == 1
    steered = [a["output"] for a in answers if a["method"] == "apsr-L0-2-local0-steps0@4"]
    assert steered != [a["output"] for a in none]  # α = 4 changes the answers
    assert {a["half"] for a in answers} == {"selection", "report"}
    assert "tokens ÷ unsteered" in (tmp_path / "out" / "results.md").read_text()
    assert all(0 <= r["loop_share"] <= 1 for r in report["rows"])
    flags = ["--tiny", "--run", str(tiny_run), "--psr", "apsr-L0-2-local0-steps0", "--alphas", "1", "4",
             "--max-new-tokens", "12", "--answers", str(tmp_path / "out" / "answers.json")]
    again = bench.main([*flags, "--out", str(tmp_path / "again")])  # summarised again, nothing generated
    assert again["rows"] == report["rows"]
    with pytest.raises(SystemExit):
        bench.main([*flags[:4], "apsr-L0-2-local0-steps0", "--alphas", "2", *flags[8:], "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_judged_report_half_scores_every_answer_and_pairs_it_with_prompt_steering(tiny_run, tmp_path):
    import json

    bench = load_benchmark("answer_length")
    report = bench.main(["--tiny", "--run", str(tiny_run), "--psr", "apsr-L0-2-local0-steps0", "--alphas", "2",
                         "--max-new-tokens", "8", "--judge", "--half", "report", "--baseline", "none",
                         "--out", str(tmp_path / "out")])
    answers = json.loads((tmp_path / "out" / "answers.json").read_text())
    assert {a["half"] for a in answers} == {"report"} and all("score" in a for a in answers)
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["prompt"]["judged"]["minus_prompt"]["mean"] == 0
    mine = [a["score"] for a in answers if a["method"] == "apsr-L0-2-local0-steps0@2"]
    assert rows["apsr-L0-2-local0-steps0@2"]["judged"]["score"]["mean"] == pytest.approx(sum(mine) / len(mine))
    assert "Judged at 8 tokens" in (tmp_path / "out" / "results.md").read_text()
    # --baseline none: every row paired with the unsteered answers, concept by concept
    versus = rows["apsr-L0-2-local0-steps0@2"]["vs_baseline"]
    theirs = [a["score"] for a in answers if a["method"] == "none"]
    assert versus["baseline"] == "none" and rows["none"]["vs_baseline"]["score"]["mean"] == 0
    assert versus["score"]["mean"] == pytest.approx(sum(mine) / len(mine) - sum(theirs) / len(theirs))
    loops = lambda m: [a["distinct_bigrams"] < 0.5 for a in answers if a["method"] == m]  # noqa: E731
    assert versus["loop_share"]["mean"] == pytest.approx(
        sum(loops("apsr-L0-2-local0-steps0@2")) / len(mine) - sum(loops("none")) / len(theirs))
    assert "Paired with `none`" in (tmp_path / "out" / "results.md").read_text()


def test_a_psr_entry_may_steer_other_positions(tiny_run, tmp_path):
    """``FOLDER@generated+K``: the same saved PSRs, the answer's first K+1 tokens unsteered; ``@generated+K:M``
    writes what ``@generated+K`` writes up to the answer's (M+1)-th token."""
    import json

    bench = load_benchmark("answer_length")
    bench.main(["--tiny", "--run", str(tiny_run), "--psr", "apsr-L0-2-local0-steps0@generated+3",
                "apsr-L0-2-local0-steps0", "apsr-L0-2-local0-steps0@generated+3:5", "--alphas", "8", "--max-new-tokens", "10",
                "--out", str(tmp_path / "out")])
    answers = json.loads((tmp_path / "out" / "answers.json").read_text())
    by = {(a["method"], a["concept_id"], a["prompt_id"]): a["output"] for a in answers}
    keys = [(c, p) for m, c, p in by if m == "none"]
    tokenizer = bench.common.load_model(True, 0).tokenizer
    start = lambda text: tokenizer(text, add_special_tokens=False).input_ids[:3]  # noqa: E731  (4 written unsteered)
    assert all(start(by["apsr-L0-2-local0-steps0@generated+3@8", c, p]) == start(by["none", c, p]) for c, p in keys)
    assert any(by["apsr-L0-2-local0-steps0@8", c, p] != by["none", c, p] for c, p in keys)
    window = lambda text: tokenizer(text, add_special_tokens=False).input_ids[:5]  # noqa: E731  (6 as generated+3)
    assert all(window(by["apsr-L0-2-local0-steps0@generated+3:5@8", c, p])
               == window(by["apsr-L0-2-local0-steps0@generated+3@8", c, p]) for c, p in keys)


@pytest.mark.parametrize(("flags", "message"), [
    (["--psr", "apsr-L9"], "is not a folder of saved PSRs"),
    (["--psr", "apsr-L0-2-local0-steps0@later"], "generated+K"),
    (["--psr", "apsr-L0-2-local0-steps0@generated+4:4"], "needs M > K"),
    (["--alphas", "0"], "--alphas must be positive numbers"),
    (["--psr", "apsr-L0-2-local0-steps0", "--baseline", "apsr-L0-2-local0-steps0@9"], "is not one of this run's rows"),
    (["--alphas", "1", "1"], "--alphas names a value twice"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
])
def test_bad_flags_stop_before_anything_is_written(tiny_run, tmp_path, capsys, flags, message):
    bench = load_benchmark("answer_length")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--tiny", "--run", str(tiny_run), "--out", str(tmp_path / "out"), *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_runs_that_cannot_be_read_or_pooled_are_refused(tiny_run, tmp_path, capsys):
    bench = load_benchmark("answer_length")
    cases = [(["--tiny", "--run", str(tmp_path)], "no split.json, settings.json, results.json"),
             (["--run", str(tiny_run)], "was made with --tiny"),
             (["--tiny", "--run", str(tiny_run), str(tiny_run)], "--run names a folder twice")]
    for flags, message in cases:
        with pytest.raises(SystemExit):
            bench.main([*flags, "--out", str(tmp_path / "out")])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--run", str(tiny_run), "--out", str(tiny_run)])
    assert "--out must not be one of the runs" in capsys.readouterr().err
