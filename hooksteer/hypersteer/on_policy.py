"""On-policy distillation targets: the *student's own* greedy answers, scored by the prompted teacher.

The default targets (:func:`hooksteer.distill.build_distill_teacher`) are the prompted model's answers: the student
is trained on token histories it will not write itself. Steered by its vectors it writes its own answers, and where
those drift (repeating the concept, leaving the instruction) nothing in training has seen them. Here the student —
a trained :class:`~hooksteer.hypersteer.HyperSteer` or :class:`~hooksteer.hypersteer.ConceptVectors` — answers each
(concept, base prompt) pair, steered with what it writes for the concept's steering prompt
(:func:`~hooksteer.hypersteer.gating.site_steering_hooks`, vectors and gates at every site), and the prompted teacher
scores that answer (top-k log-probs per token), so a further round of training pulls the student back where its own
answers go wrong (one round of on-policy distillation, as in GKD, Agarwal et al. 2024).

Example:
    >>> data = build_on_policy_teacher(model, pairs, oracle, DistillConfig(max_new_tokens=32))   # doctest: +SKIP
    >>> HyperSteerTrainer(oracle, [*prompted.records, *data.records]).train()                    # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.distill import DistillConfig, DistillData, model_signature, student_prompt
from hooksteer.distill.teacher import records_from_answers, steering_prompt_of
from hooksteer.hooks import PositionTracker, apply_steering_hooks
from hooksteer.hypersteer.gating import site_steering_hooks

__all__ = ["build_on_policy_teacher"]


def build_on_policy_teacher(model: Any, pairs: Sequence[tuple[Concept, BasePrompt]], student: Any,
                            config: DistillConfig | None = None, *, generator: Any = None,
                            progress: bool = True) -> DistillData:
    """Records of the student's own greedy answers (steered by ``student`` at every one of its sites, each row
    with its concept's steering prompt), scored by the prompted teacher; not cached (they depend on the student).

    Args:
        model: the frozen base model (the teacher, and the student's base model).
        pairs: (concept, base prompt) pairs; every concept's steering prompt (``config.phrasing``) must be one the
            student knows (an oracle knows only its own keys).
        student: a trained HyperSteer or ConceptVectors (``steering_params``, ``config.hook_names``).
        config: length, top-k and teacher phrasing (``response`` is ignored: the answer is the student's).
        generator: the same network as another model object for faster generation (e.g. its TransformerBridge).
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    from hooksteer.generation import generate_tokens

    config = config or DistillConfig()
    generator = generator if generator is not None else model
    d_model = int(model.cfg.d_model)
    records, processed, started = [], 0, time.perf_counter()
    batches = [list(pairs[i : i + config.batch_size]) for i in range(0, len(pairs), config.batch_size)]
    bar = tqdm(total=len(pairs), desc="on-policy answers", unit="pair", disable=not progress)
    for batch in batches:
        steering = [steering_prompt_of(c, config) for c, _ in batch]
        params = student.steering_params(steering, [b.text for _, b in batch])
        tracker = PositionTracker()
        hooks = site_steering_hooks(student.config.hook_names, params, d_model, positions=student.config.positions,
                                    tracker=tracker)
        with apply_steering_hooks(generator, hooks, tracker):
            rows = generate_tokens(generator, [student_prompt(model, b.text) for _, b in batch],
                                   max_new_tokens=config.max_new_tokens, do_sample=False)
        made, tokens = records_from_answers(model, generator, batch, rows, config)
        records += made
        processed += tokens
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - started
    stats = {"n_pairs": len(records), "seconds": round(seconds, 2), "tokens_processed": processed,
             "seconds_per_pair": seconds / max(len(records), 1),
             "finished_fraction": sum(r.finished for r in records) / max(len(records), 1),
             "mean_response_tokens": sum(r.n_tokens for r in records) / max(len(records), 1)}
    return DistillData(records, {**config.to_dict(), "response": "student", "model": model_signature(model)}, stats)
