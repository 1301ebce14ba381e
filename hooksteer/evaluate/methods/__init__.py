"""Steering methods as the evaluation protocol sees them: prepare per concept, then generate.

A :class:`SteeringMethod` turns one concept into a :class:`ConceptSteerer`; the steerer generates
answers to a batch of base prompts at a list of steering factors. This keeps the protocol
(:mod:`hooksteer.evaluate.protocol`) independent of *how* a method steers:

* vector methods (:class:`DiffMeanMethod`, :class:`PCAMethod`, :class:`RandomControl`) add
  ``factor · magnitude · unit(v)`` to the residual stream at every position (AxBench);
* :class:`PromptSteering` rewrites the user message and installs no hook (factor ignored);
* :class:`NoSteering` generates plainly (reference);
* :class:`PrefixSteering` lets the answer attend to the steering prompt's own keys and values (a bridge only);
* later methods plug in through the same two calls: HyperSteer returns a :class:`VectorSteerer` whose
  ``direction`` is a callable giving one vector per base prompt (per-row ``(batch, d_model)``
  directions are supported by the hooks), PSR a steerer that installs a gated hook.

Magnitude (documented choice). AxBench scales the unit vector by ``factor ×`` the concept's mean
maximum activation. Here ``magnitude="resid_norm"`` (default) uses the mean L2 norm of the residual
stream at the steering site over the tokens of the concept's positive and negative texts (the
first token of each text is left out: attention-sink tokens have norms many times the rest), so
``factor=1`` adds a vector as long as a typical residual-stream vector. ``"max_projection"`` is the
AxBench reference (mean over positive texts of the maximum per-token projection on the unit
direction); a number fixes the magnitude.

Modules (every name below is importable from ``hooksteer.evaluate.methods``):

* :mod:`.common` — :class:`GenerationSettings`, :func:`derive_seed`, the :class:`SteeringMethod` and
  :class:`ConceptSteerer` protocols;
* :mod:`.vector_steering` — :class:`VectorSteerer`;
* :mod:`.texts` — what vector methods read (:func:`default_texts_for`, :func:`pool_texts_for`, ...);
* :mod:`.magnitudes` — :func:`residual_norm`, :func:`max_projection`;
* :mod:`.vector_methods` — :class:`VectorMethod`, :class:`DiffMeanMethod`, :class:`PCAMethod`,
  :class:`RandomControl`;
* :mod:`.prompt` — :class:`PromptSteering`, :class:`NoSteering` (no hook);
* :mod:`.prefix` — :class:`PrefixSteering` (the answer attends to the steering prompt's keys and values);
* :mod:`.registry` — :func:`build_methods` by name.

Example:
    >>> method = DiffMeanMethod(layer=10)
    >>> steerer = method.prepare(model, concept, others)                            # doctest: +SKIP
    >>> outputs = steerer.generate(["Tell me a story."], [0.5, 1.0], GenerationSettings(), seed=0)  # doctest: +SKIP
    >>> len(outputs), len(outputs[0])                     # (factors, prompts)        # doctest: +SKIP
    (2, 1)
"""

from hooksteer.evaluate.methods.common import (
    ConceptSteerer,
    Factor,
    GenerationSettings,
    SteeringMethod,
    derive_seed,
)
from hooksteer.evaluate.methods.magnitudes import max_projection, residual_norm
from hooksteer.evaluate.methods.prefix import PrefixSteerer, PrefixSteering, WithPrefix, WithPrefixSteerer
from hooksteer.evaluate.methods.prompt import (
    MessageBuilder,
    NoSteering,
    PlainSteerer,
    PromptSteerer,
    PromptSteering,
    default_message_builder,
    simple_steered_message,
)
from hooksteer.evaluate.methods.registry import METHOD_FACTORIES, build_methods
from hooksteer.evaluate.methods.texts import (
    TextsFor,
    concept_reference,
    concept_sentences,
    default_texts_for,
    pool_texts_for,
)
from hooksteer.evaluate.methods.vector_methods import (
    DiffMeanMethod,
    Magnitude,
    PCAMethod,
    RandomControl,
    VectorMethod,
)
from hooksteer.evaluate.methods.vector_steering import DirectionSource, VectorSteerer

__all__ = [
    "METHOD_FACTORIES",
    "ConceptSteerer",
    "DiffMeanMethod",
    "DirectionSource",
    "Factor",
    "GenerationSettings",
    "Magnitude",
    "MessageBuilder",
    "NoSteering",
    "PCAMethod",
    "PlainSteerer",
    "PrefixSteerer",
    "PrefixSteering",
    "PromptSteerer",
    "PromptSteering",
    "RandomControl",
    "SteeringMethod",
    "TextsFor",
    "VectorMethod",
    "VectorSteerer",
    "WithPrefix",
    "WithPrefixSteerer",
    "build_methods",
    "concept_reference",
    "concept_sentences",
    "default_message_builder",
    "default_texts_for",
    "derive_seed",
    "max_projection",
    "pool_texts_for",
    "residual_norm",
    "simple_steered_message",
]
