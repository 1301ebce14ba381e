"""The AxBench-style evaluation protocol, its method adapters, reports and the `evaluate` CLI command.

Tiny models and a keyword judge keep everything offline and fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import pytest
import torch

from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.evaluate.base import JudgeScores
from hooksteer.evaluate.methods import (
    DiffMeanMethod,
    GenerationSettings,
    NoSteering,
    PCAMethod,
    PromptSteering,
    RandomControl,
    build_methods,
    default_message_builder,
    default_texts_for,
)
from hooksteer.evaluate.protocol import (
    FactorCell,
    check_factors,
    choose_factor,
    evaluate,
    load_results,
    mode_collapse,
    split_prompts,
)
from hooksteer.evaluate.report import markdown_table

torch.set_num_threads(1)


# ============================================================================ fakes
class KeywordJudge:
    """Concept 2 if the output contains the keyword, else 0.5; instruction and fluency fixed at 1."""

    name = "keyword"

    def __init__(self, keyword: str = "TARGET") -> None:
        self.keyword = keyword
        self.calls: list[tuple[str, str, list[str]]] = []

    def rate(self, concept: str, instruction: str, outputs: Sequence[str]) -> list[JudgeScores]:
        self.calls.append((concept, instruction, list(outputs)))
        return [JudgeScores(concept=2.0 if self.keyword in o else 0.5, instruction=1.0, fluency=1.0)
                for o in outputs]


class TableSteerer:
    def __init__(self, write: Callable[[str, float | None], str]) -> None:
        self.write, self.info = write, {"fake": True}

    def generate(self, prompts, factors, settings, seed):
        return [[self.write(prompt, factor) for prompt in prompts] for factor in factors]


class TableMethod:
    """A steering method whose output is ``write(prompt_text, factor)``; no model needed."""

    uses_factors = True

    def __init__(self, write: Callable[[str, float | None], str], name: str = "table") -> None:
        self.write, self.name = write, name

    def prepare(self, model, concept, others):
        return TableSteerer(self.write)

    def config(self):
        return {"name": self.name}


CONCEPTS = [
    Concept(id="dogs", title="Dogs", description="domestic animal", steering_prompts=["Talk about dogs."],
            text="Dogs are domesticated descendants of wolves. They are kept as pets all over the world."),
    Concept(id="paris", title="Paris", description="capital of France", steering_prompts=["Talk about Paris."],
            text="Paris is the capital and largest city of France. It is known for its museums and cafes."),
]
PROMPTS = [BasePrompt(id=f"p{i}", text=text) for i, text in enumerate(
    ["Tell me about your day.", "What is the weather like?", "Write a short poem.", "Say hello to me.",
     "Give me a cooking tip.", "Describe the sea."])]


def halves(concept_id: str, seed: int = 0) -> tuple[set[str], set[str]]:
    selection, report = split_prompts(PROMPTS, seed, concept_id)
    return {p.text for p in selection}, {p.text for p in report}


# ============================================================================ protocol logic
def test_factor_is_chosen_on_the_selection_half_only():
    selection, _ = halves("dogs")

    def write(prompt: str, factor: float | None) -> str:  # selection likes 2.0, report likes 1.0
        best = 2.0 if prompt in selection else 1.0
        return f"TARGET at {factor}" if factor == best else f"plain at {factor}"

    def write_other_report(prompt: str, factor: float | None) -> str:  # report half now likes 3.0
        if prompt in selection:
            return write(prompt, factor)
        return f"TARGET {factor}" if factor == 3.0 else "something else"

    runs = [evaluate(None, [TableMethod(w)], CONCEPTS[:1], PROMPTS, judge=KeywordJudge(), factors=[1.0, 2.0, 3.0],
                     progress=False) for w in (write, write_other_report)]
    assert [r.concepts[0].chosen_factor for r in runs] == [2.0, 2.0]
    # reported ratings are the report half's at the chosen factor: no keyword there in either run
    assert runs[0].concepts[0].report["concept"] == 0.5
    assert runs[0].concepts[0].cells[0].report["concept"] == 2.0  # factor 1.0 was better on the report half
    # whereas changing the selection half does move the choice
    moved = evaluate(None, [TableMethod(lambda p, f: "TARGET" if f == 3.0 else "x")], CONCEPTS[:1], PROMPTS,
                     judge=KeywordJudge(), factors=[1.0, 2.0, 3.0], progress=False)
    assert moved.concepts[0].chosen_factor == 3.0


def test_split_is_deterministic_disjoint_and_seeded():
    first, again = split_prompts(PROMPTS, 0, "dogs"), split_prompts(PROMPTS, 0, "dogs")
    assert [p.id for p in first[0]] == [p.id for p in again[0]]
    assert {p.id for p in first[0]}.isdisjoint(p.id for p in first[1])
    assert len(first[0]) == 3 and len(first[1]) == 3
    splits = {tuple(p.id for p in split_prompts(PROMPTS, seed, "dogs")[0]) for seed in range(10)}
    assert len(splits) > 1
    with pytest.raises(ValueError, match="at least 2"):
        split_prompts(PROMPTS[:1], 0, "dogs")


def test_mode_collapse_detection_in_cells():
    def write(prompt: str, factor: float | None) -> str:
        return "the the the the" if factor == 4.0 else f"answer to {prompt} at {factor}"

    result = evaluate(None, [TableMethod(write)], CONCEPTS, PROMPTS, judge=KeywordJudge(), factors=[1.0, 4.0],
                      progress=False)
    for concept in result.concepts:
        assert concept.collapsed_factors == [4.0]
        assert concept.cells[1].top_output_share == 1.0
    assert result.summary()["table"]["collapsed_cells"] == 2


def test_mode_collapse_threshold():
    assert mode_collapse(["same"] * 19 + ["other"]) == (True, 0.95)
    assert mode_collapse(["same"] * 18 + ["a", "b"])[0] is False
    assert mode_collapse(["one"]) == (False, 1.0)  # a single output is not a collapse


def test_ties_pick_the_first_factor():
    result = evaluate(None, [TableMethod(lambda p, f: "TARGET")], CONCEPTS[:1], PROMPTS, judge=KeywordJudge(),
                      factors=[0.5, 1.0, 2.0], progress=False)
    assert result.concepts[0].chosen_factor == 0.5
    assert choose_factor(result.concepts[0].cells).factor == 0.5


def test_zero_score_ties_are_broken_by_the_mean_rating():
    def cell(factor, concept, instruction, fluency):
        ratings = {"concept": concept, "instruction": instruction, "fluency": fluency, "score": 0.0}
        return FactorCell(factor, ratings, dict(ratings), False, 0.0)

    cells = [cell(0.1, 0.0, 2.0, 0.0), cell(0.2, 1.0, 2.0, 0.0), cell(0.4, 0.5, 0.0, 0.0)]
    assert choose_factor(cells).factor == 0.2
    winner = cell(0.8, 0.0, 0.0, 0.0)
    winner.selection["score"] = 0.1  # any positive score beats every zero-score cell
    assert choose_factor([*cells, winner]).factor == 0.8


def test_judge_sees_concept_reference_and_base_prompt():
    judge = KeywordJudge()
    evaluate(None, [TableMethod(lambda p, f: "x")], CONCEPTS[:1], PROMPTS, judge=judge, factors=[1.0, 2.0],
             progress=False)
    concept_texts = {call[0] for call in judge.calls}
    assert len(concept_texts) == 1 and "Dogs" in concept_texts.pop()
    assert {call[1] for call in judge.calls} == {p.text for p in PROMPTS}
    assert all(len(call[2]) == 2 for call in judge.calls)  # one judge call per prompt covers the sweep


@pytest.mark.parametrize("kwargs, message", [
    ({"concepts": []}, "concepts is empty"),
    ({"factors": []}, "factors is empty"),
    ({"factors": [1.0, float("nan")]}, "finite"),
    ({"factors": [1.0, 1.0]}, "duplicates"),
    ({"methods": []}, "methods is empty"),
    ({"base_prompts": PROMPTS[:1]}, "at least 2"),
])
def test_bad_inputs_raise_clear_errors(kwargs, message):
    arguments = {"methods": [TableMethod(lambda p, f: "x")], "concepts": CONCEPTS, "base_prompts": PROMPTS,
                 "factors": [1.0], **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate(None, arguments["methods"], arguments["concepts"], arguments["base_prompts"],
                 judge=KeywordJudge(), factors=arguments["factors"], progress=False)


def test_judge_returning_nan_is_rejected():
    class Bad:
        concept = instruction = fluency = float("nan")

    class BadJudge(KeywordJudge):
        def rate(self, concept, instruction, outputs):
            return [Bad() for _ in outputs]

    with pytest.raises(ValueError, match="non-finite"):
        evaluate(None, [TableMethod(lambda p, f: "x")], CONCEPTS[:1], PROMPTS, judge=BadJudge(), factors=[1.0],
                 progress=False)


def test_check_factors():
    assert check_factors([1, 0.5]) == [1.0, 0.5]
    with pytest.raises(ValueError):
        check_factors([math.inf])


# ============================================================================ files
def test_results_are_saved_and_reloadable(tmp_path):
    selection, _ = halves("dogs")
    result = evaluate(None, [TableMethod(lambda p, f: f"TARGET {f}" if f == 2.0 else "x"),
                             TableMethod(lambda p, f: "x", name="other")],
                      CONCEPTS, PROMPTS, judge=KeywordJudge(), factors=[1.0, 2.0], seed=3, out_dir=tmp_path,
                      progress=False)
    for name in ("results.json", "generations.json", "results.md", "factor_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0
    loaded = load_results(tmp_path)
    assert loaded.summary() == result.summary()
    assert loaded.generations == result.generations
    assert loaded.concepts == result.concepts
    assert loaded.config["seed"] == 3 and loaded.config["factors"] == [1.0, 2.0]
    assert len(loaded.generations) == 2 * len(CONCEPTS) * len(PROMPTS) * 2  # methods × concepts × prompts × factors
    table = (tmp_path / "results.md").read_text()
    assert "| method | held-out concept | instruction | fluency | steering score |" in table
    assert markdown_table(loaded).splitlines()[2].startswith("| table | 2.000 | 1.000 | 1.000 |")
    json.loads((tmp_path / "results.json").read_text())  # strict JSON (no NaN)


def test_reuse_loads_a_saved_run_with_the_same_settings_only(tmp_path):
    calls: list[float] = []

    def answer(prompt, factor):
        calls.append(factor)
        return f"TARGET {factor}" if factor == 2.0 else "x"

    def run(factors, reuse):
        return evaluate(None, [TableMethod(answer)], CONCEPTS, PROMPTS, judge=KeywordJudge(), factors=factors,
                        seed=3, out_dir=tmp_path, progress=False, reuse=reuse)

    first = run([1.0, 2.0], reuse=True)  # nothing saved yet: generates
    n = len(calls)
    assert n > 0
    again = run([1.0, 2.0], reuse=True)  # same settings: loaded, nothing generated
    assert len(calls) == n and again.concepts == first.concepts and again.generations == first.generations
    run([1.0, 2.0], reuse=False)  # reuse is opt-in
    assert len(calls) == 2 * n
    other = run([1.0, 3.0], reuse=True)  # other factors: generated anew
    assert len(calls) == 3 * n and other.config["factors"] == [1.0, 3.0]


def test_reuse_by_name_generates_only_the_added_or_changed_methods(tmp_path):
    calls: dict[str, int] = {}

    def writer(name, target_factor):
        def answer(prompt, factor):
            calls[name] = calls.get(name, 0) + 1
            return f"TARGET {factor}" if factor == target_factor else "x"
        return answer

    class Configured(TableMethod):
        def __init__(self, write, name, version):
            super().__init__(write, name)
            self.version = version

        def config(self):
            return {"name": self.name, "version": self.version}

    def run(methods, reuse):
        return evaluate(None, methods, CONCEPTS, PROMPTS, judge=KeywordJudge(), factors=[1.0, 2.0], seed=3,
                        out_dir=tmp_path, progress=False, reuse=reuse)

    first = run([Configured(writer("a", 2.0), "a", 1)], reuse=False)
    n = calls["a"]
    added = run([Configured(writer("a", 2.0), "a", 1), Configured(writer("b", 1.0), "b", 1)], reuse={"a", "b"})
    assert calls == {"a": n, "b": n}  # a's results came from disk, only b was generated
    assert [c for c in added.concepts if c.method == "a"] == first.concepts
    assert [g for g in added.generations if g.method == "a"] == first.generations
    assert added.methods == ["a", "b"] and {c.method for c in load_results(tmp_path).concepts} == {"a", "b"}
    run([Configured(writer("a", 2.0), "a", 2), Configured(writer("b", 1.0), "b", 1)], reuse={"a", "b"})
    assert calls == {"a": 2 * n, "b": n}  # a's config changed: generated again; b reused
    run([Configured(writer("a", 2.0), "a", 2), Configured(writer("b", 1.0), "b", 1)], reuse={"a"})
    assert calls == {"a": 2 * n, "b": 2 * n}  # b not named: generated again
    evaluate(None, [Configured(writer("a", 2.0), "a", 2)], CONCEPTS[:1], PROMPTS, judge=KeywordJudge(),
             factors=[1.0, 2.0], seed=3, out_dir=tmp_path, progress=False, reuse={"a"})
    assert calls["a"] == 2 * n + n // 2  # other concepts: other settings, nothing reused
    with pytest.raises(TypeError, match="single string"):
        run([Configured(writer("a", 2.0), "a", 2)], reuse="a")


# ============================================================================ adapters on tiny models
def test_prompt_baseline_rewrites_message_and_adds_no_hooks(tiny_llama, monkeypatch):
    seen: list[list[str]] = []

    def fake_generate(model, prompts, **kwargs):
        assert all(not point.fwd_hooks for point in model.hook_dict.values())
        seen.append(list(prompts))
        return [f"reply {i}" for i in range(len(prompts))]

    monkeypatch.setattr("hooksteer.generation.generate_texts", fake_generate)
    method = PromptSteering(message_builder=lambda steering, base: f"[{steering}] {base}")
    result = evaluate(tiny_llama, [method], CONCEPTS[:1], PROMPTS, judge=KeywordJudge(), factors=[1.0, 2.0],
                      progress=False)
    messages = [m for batch in seen for m in batch]
    assert sorted(messages) == sorted(f"[Talk about dogs.] {p.text}" for p in PROMPTS)
    assert result.concepts[0].chosen_factor is None  # prompt steering has no factor
    assert {g.factor for g in result.generations} == {None}


def test_prompt_with_background_puts_the_reference_text_first_and_refuses_what_it_cannot_build(tiny_llama):
    import dataclasses

    concept = dataclasses.replace(CONCEPTS[0], text="Dogs are loyal animals that people keep as pets.")
    method = PromptSteering(message_builder=lambda steering, base: f"[{steering}] {base}", background_chars=9)
    message = method.prepare(tiny_llama, concept, []).messages(["Describe the sea."])[0]
    assert message == "Background: Dogs are \n\n[Talk about dogs.] Describe the sea."  # cut to 9 characters
    assert method.config()["background_chars"] == 9 and "background_chars" not in PromptSteering().config()
    with pytest.raises(ValueError, match="has no reference text"):
        method.prepare(tiny_llama, dataclasses.replace(concept, text="  "), [])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="background_chars must be None or a positive integer"):
            PromptSteering(background_chars=bad)


def test_prompt_steering_places_the_steering_prompt_by_style(tiny_llama):
    placed = {style: PromptSteering(style=style).prepare(tiny_llama, CONCEPTS[0], []).messages(["Describe the sea."])[0]
              for style in ("prefix", "suffix", "split")}
    assert placed == {"prefix": "Talk about dogs.\n\nDescribe the sea.", "suffix": "Describe the sea.\n\nTalk about dogs.",
                      "split": "Talk about dogs. Describe the sea. Talk about dogs."}
    assert PromptSteering(style="prefix").config()["style"] == "prefix" and "style" not in PromptSteering().config()
    assert PromptSteering(style="split").config()["message_builder"] != PromptSteering(style="prefix").config()[
        "message_builder"]
    with pytest.raises(ValueError, match="style must be None or one of"):
        PromptSteering(style="system")
    from hooksteer.data.phrasing import STYLES
    from hooksteer.evaluate.methods.prompt import USER_TURN_STYLES

    assert set(USER_TURN_STYLES) == set(STYLES) - {"system"}  # "system" leaves the user turn plain
    with pytest.raises(ValueError, match="not both"):
        PromptSteering(style="prefix", message_builder=lambda steering, base: base)


def test_default_message_builder_keeps_both_parts():
    message = default_message_builder()("Talk about dogs.", "Describe the sea.")
    assert "dogs" in message and "Describe the sea." in message


def test_random_control_matches_base_norm_and_magnitude(tiny_llama):
    base = DiffMeanMethod(layer=1)
    control = RandomControl(base=base, seed=0)
    reference = base.prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    random_steerer = control.prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    assert random_steerer.vector.norm() == pytest.approx(reference.vector.norm(), rel=1e-5)
    assert random_steerer.magnitude == pytest.approx(reference.magnitude)
    assert random_steerer.hook_name == reference.hook_name
    assert abs(float(random_steerer.direction @ reference.direction)) < 0.9
    assert float(random_steerer.direction.norm()) == pytest.approx(1.0, rel=1e-5)


def test_vector_steerer_scales_each_row_by_its_factor(tiny_llama, monkeypatch):
    steerer = DiffMeanMethod(layer=1, magnitude=2.0).prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    calls: list[tuple[list[str], torch.Tensor]] = []

    def record(prompts, directions, settings, seed):
        calls.append((prompts, directions))
        return [f"{p}|{float(d.norm()):.3f}" for p, d in zip(prompts, directions, strict=True)]

    monkeypatch.setattr(steerer, "_generate_rows", record)
    outputs = steerer.generate(["a?", "b?", "c?"], [0.5, 1.0], GenerationSettings(batch_size=4), seed=0)
    assert [len(prompts) for prompts, _ in calls] == [4, 2]  # 6 rows in batches of 4
    assert outputs == [["a?|1.000", "b?|1.000", "c?|1.000"], ["a?|2.000", "b?|2.000", "c?|2.000"]]


def test_vector_steerer_really_steers(tiny_llama):
    steerer = DiffMeanMethod(layer=1).prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    settings = GenerationSettings(max_new_tokens=6, do_sample=False)
    plain, steered = steerer.generate(["Tell me about your day."], [0.0, 8.0], settings, seed=0)
    assert plain != steered
    assert all(not point.fwd_hooks for point in tiny_llama.hook_dict.values())


def test_same_seed_same_generations(tiny_llama):
    def run(seed: int):
        return evaluate(tiny_llama, [DiffMeanMethod(layer=1)], CONCEPTS, PROMPTS[:4], judge=KeywordJudge(),
                        factors=[0.5, 1.0], max_new_tokens=6, do_sample=True, seed=seed, progress=False)

    first, again, other = run(0), run(0), run(1)
    assert [g.output for g in first.generations] == [g.output for g in again.generations]
    assert [g.output for g in first.generations] != [g.output for g in other.generations]


def test_pca_and_default_texts(tiny_gpt2):
    positive, negative = default_texts_for(CONCEPTS[0], CONCEPTS)
    assert positive and negative and not set(positive) & set(negative)
    steerer = PCAMethod(layer=1).prepare(tiny_gpt2, CONCEPTS[0], CONCEPTS[1:])
    assert steerer.info["method"] == "pca" and steerer.magnitude > 0
    with pytest.raises(ValueError, match="at least two concepts"):
        DiffMeanMethod(layer=1).prepare(tiny_gpt2, CONCEPTS[0], [])


def test_build_methods():
    names = [m.name for m in build_methods(["prompt", "diffmean", "pca", "random", "none"])]
    assert names == ["prompt", "diffmean", "pca", "random", "none"]
    assert isinstance(build_methods(["none"])[0], NoSteering)
    with pytest.raises(ValueError, match="unknown method"):
        build_methods(["nope"])


# ============================================================================ CLI wiring
@pytest.mark.parametrize("model_class", ["bridge", "hooked"])
def test_cli_evaluate_wiring(model_class, tiny_llama, tiny_bridge, monkeypatch, tmp_path, capsys):
    import hooksteer
    from hooksteer import cli
    from hooksteer.data.splits import DatasetSplit

    extra = [Concept(id=f"x{i}", title=f"Extra {i}", text=f"Extra concept {i} is about something else entirely.",
                     steering_prompts=[f"Talk about extra {i}."]) for i in range(25)]
    prompts = [*PROMPTS, *(BasePrompt(id=f"q{i}", text=f"Question number {i}?") for i in range(24))]
    monkeypatch.setattr(hooksteer, "load_model", lambda *a, **k: tiny_llama)
    monkeypatch.setattr(hooksteer, "load_bridge", lambda *a, **k: tiny_bridge)
    monkeypatch.setattr("hooksteer.data.concepts.load_concepts", lambda limit=None, seed=0: [*CONCEPTS, *extra][:limit])
    monkeypatch.setattr("hooksteer.data.base_prompts.load_base_prompts", lambda *a, **k: prompts)
    monkeypatch.setattr("hooksteer.evaluate.judges.EmbeddingJudge", lambda **kwargs: KeywordJudge())
    code = cli.main(["evaluate", "--small", "--concepts", "2", "--negatives", "2", "--max-new-tokens", "4",
                     "--factors", "0.5,1", "--methods", "prompt,diffmean,random", "--layer", "1",
                     "--model-class", model_class, "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| method | held-out concept | instruction | fluency | steering score |" in printed
    loaded = load_results(tmp_path)
    assert loaded.methods == ["prompt", "diffmean", "random"]
    assert loaded.config["factors"] == [0.5, 1.0]
    assert json.loads((tmp_path / "config.json").read_text())["command"] == "evaluate"
    split = DatasetSplit.load(tmp_path / "split.json")
    evaluated = {c.concept_id for c in loaded.concepts}
    assert evaluated <= set(split.held_out_concepts), "the CLI evaluates held-out concepts only"
    assert set(loaded.config["base_prompts"]) <= set(split.eval_prompts)


# ============================================================================ real model (slow)
@pytest.mark.slow
@pytest.mark.real_model
def test_protocol_on_real_model_with_real_data(tmp_path):
    """Prompt steering, DiffMean and the random control on the embedded model and the packaged data."""
    from hooksteer import models

    try:
        models.find_default_gguf()
        from hooksteer.data.base_prompts import load_base_prompts
        from hooksteer.data.concepts import load_concepts
        concepts = load_concepts(limit=6, seed=0)
        prompts = load_base_prompts(["hand-written"])[:2]
    except Exception as error:  # weights or data packages not installed
        pytest.skip(f"real model or data not available: {error}")
    model = models.load_model(progress=False)
    from hooksteer.evaluate.methods import pool_texts_for

    texts_for = pool_texts_for(concepts)
    methods = build_methods(["prompt", "diffmean", "random"], texts_for=texts_for)
    result = evaluate(model, methods, concepts[:1], prompts, judge=KeywordJudge(concepts[0].title),
                      factors=[0.1, 0.3], max_new_tokens=12, out_dir=tmp_path, progress=False)
    assert result.methods == ["prompt", "diffmean", "random"]
    assert all(g.output for g in result.generations)
    assert load_results(tmp_path).summary() == result.summary()
