"""On-policy distillation targets (:mod:`hooksteer.hypersteer.on_policy`): the student's own steered answers,
scored by the prompted teacher."""

from __future__ import annotations

import torch
from test_hypersteer_distill import BASE, STEER

from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.distill import DistillConfig, build_distill_teacher, student_prompt
from hooksteer.generation import generate_tokens
from hooksteer.hypersteer import HyperSteerConfig, HyperSteerTrainer, mean_loss
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.gating import steer_with
from hooksteer.hypersteer.on_policy import build_on_policy_teacher

torch.set_num_threads(1)
CONCEPTS = [Concept(id=w, title=w, steering_prompts=[s]) for w, s in zip(("rivers", "castles"), STEER, strict=False)]
PROMPTS = [BasePrompt(id=f"p{i}", text=t) for i, t in enumerate(BASE[:2])]
PAIRS = [(c, p) for c in CONCEPTS for p in PROMPTS]
CONFIG = DistillConfig(max_new_tokens=5, top_k=16, batch_size=3)


def _student(model, scale: float = 6.0) -> ConceptVectors:
    return ConceptVectors(model, [c.steering_prompts[0] for c in CONCEPTS], HyperSteerConfig(layers=[0, 2]),
                          init_std=scale)


def test_the_answers_are_the_students_own_and_the_teacher_is_the_prompted_model(tiny_llama):
    student = _student(tiny_llama)
    data = build_on_policy_teacher(tiny_llama, PAIRS, student, CONFIG, progress=False)
    assert len(data) == len(PAIRS) and data.config["response"] == "student"
    prompted = build_distill_teacher(tiny_llama, PAIRS, CONFIG, progress=False)
    for (concept, base), record, reference in zip(PAIRS, data.records, prompted.records, strict=True):
        assert record.steering_prompt == concept.steering_prompts[0] and record.base_prompt == base.text
        with steer_with(student, record.steering_prompt):  # the student's own greedy answer, steered alone
            alone = generate_tokens(tiny_llama, [student_prompt(tiny_llama, base.text)], max_new_tokens=5,
                                    do_sample=False)[0]
        torch.testing.assert_close(record.response_ids, alone[: len(record.response_ids)].cpu().long())
        if torch.equal(record.response_ids, reference.response_ids):  # same answer: same teacher distributions
            torch.testing.assert_close(record.teacher_logprobs, reference.teacher_logprobs, atol=1e-4, rtol=1e-4)
    differs = [not torch.equal(a.response_ids, b.response_ids) for a, b in zip(data.records, prompted.records,
                                                                              strict=True)]
    assert any(differs)  # a strong student writes other answers than the prompted model


def test_a_student_that_does_not_steer_answers_like_the_unsteered_model(tiny_llama):
    silent = _student(tiny_llama, scale=0.0)
    data = build_on_policy_teacher(tiny_llama, PAIRS, silent, CONFIG, progress=False)
    unsteered = build_distill_teacher(tiny_llama, PAIRS, DistillConfig(response="unsteered", max_new_tokens=5,
                                                                       top_k=16, batch_size=3), progress=False)
    for record, reference in zip(data.records, unsteered.records, strict=True):
        assert torch.equal(record.response_ids, reference.response_ids)
        torch.testing.assert_close(record.teacher_logprobs, reference.teacher_logprobs, atol=1e-4, rtol=1e-4)


def test_a_second_round_on_own_answers_lowers_the_loss_there(tiny_llama):
    prompted = build_distill_teacher(tiny_llama, PAIRS, CONFIG, progress=False)
    config = HyperSteerConfig(layers=[0, 2], lr=0.05, batch_size=4, max_steps=30, eval_every=0)
    student = ConceptVectors.oracle(tiny_llama, [c.steering_prompts[0] for c in CONCEPTS], config)
    HyperSteerTrainer(student, prompted.records, progress=False).train()
    own = build_on_policy_teacher(tiny_llama, PAIRS, student, CONFIG, progress=False)
    before = mean_loss(student, own.records)
    HyperSteerTrainer(student, [*prompted.records, *own.records], progress=False).train()
    assert mean_loss(student, own.records) < before
