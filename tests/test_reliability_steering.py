"""Steering never silently does the wrong thing (issue 14, items 1, 3, 4, 5 and 9).

Each ``BAD_*`` table below is one row of the README's *Guarantees* table (rendered by
``benchmarks/guarantees_table.py``): ``(what was tried, how, exception, message fragment)``.
"""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch

import hooksteer as hs
from hooksteer.generation import generate_texts
from hooksteer.hooks import SteeringThreadError, active_steering, add_gated, add_vector

PROMPT = "the cat sat on the mat"
RESID = "blocks.1.hook_resid_post"


@pytest.fixture(params=["llama", "bridge"])
def steerable(request):
    """A HookedTransformer and a TransformerBridge (the two model classes hooksteer steers)."""
    return request.getfixturevalue({"llama": "tiny_llama", "bridge": "tiny_bridge"}[request.param])


def vector(site, width, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return hs.SteeringVector(site, scale * torch.randn(width, generator=g))


def recorded(model, tokens, site):
    """The activation at ``site`` as the layers after it see it (after any steering hook)."""
    seen = {}

    def record(activation, hook):
        seen["value"] = activation.detach().clone()

    with model.hooks(fwd_hooks=[(site, record)]):
        model(tokens)
    return seen["value"]


def no_hooks_left(model):
    points = {id(p): p for p in model.hook_dict.values()}.values()
    return all(not p.fwd_hooks for p in points) and not model.blocks[0]._forward_pre_hooks


# ============================================================================ item 1: token axis of every site
TOKEN_SITES = [  # (hook name, width attribute of cfg): activations (batch, pos, ...) with pos on axis 1
    ("blocks.1.attn.hook_z", "d_head"),
    ("blocks.1.attn.hook_q", "d_head"),
    ("blocks.1.attn.hook_k", "d_head"),
    ("blocks.1.attn.hook_v", "d_head"),
    ("blocks.1.mlp.hook_post", "d_mlp"),
    (RESID, "d_model"),
]


@pytest.mark.parametrize("site, width", TOKEN_SITES, ids=[s for s, _ in TOKEN_SITES])
@pytest.mark.parametrize("mode", ["indices", "generated", "per_token"])
def test_positions_are_honoured_on_the_token_axis_of_every_site(steerable, site, width, mode):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    n = tokens.shape[1]
    v = vector(site, int(getattr(model.cfg, width)))
    schedule = torch.arange(1, n + 1, dtype=torch.float32)
    kwargs, coefficient = {
        "indices": ({"positions": [1, 4]}, torch.tensor([3.0 if p in (1, 4) else 0.0 for p in range(n)])),
        "generated": ({"positions": "generated"}, torch.zeros(n)),  # one forward pass: nothing is generated
        "per_token": ({"per_token": schedule}, 3.0 * schedule),
    }[mode]
    clean = recorded(model, tokens, site)
    with hs.steer(model, v, coefficient=3.0, **kwargs):
        dirty = recorded(model, tokens, site)
    assert no_hooks_left(model)
    for pos in range(n):
        if coefficient[pos] == 0:
            assert torch.equal(dirty[0, pos], clean[0, pos]), f"position {pos} was steered"
        else:  # the same c_t · v on every head of the token
            expected = clean[0, pos] + coefficient[pos] * v.vector
            torch.testing.assert_close(dirty[0, pos], expected, atol=1e-5, rtol=0)


def test_gate_reads_each_token_and_head_at_hook_z(steerable):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    site, d_head = "blocks.1.attn.hook_z", model.cfg.d_head
    v = vector(site, d_head, seed=1)
    gate = hs.ReluGate(torch.randn(d_head, generator=torch.Generator().manual_seed(2)), bias=0.1)
    clean = recorded(model, tokens, site)
    with hs.steer(model, v, gate=gate, coefficient=2.0):
        dirty = recorded(model, tokens, site)
    expected = clean + 2.0 * gate(clean)[..., None] * v.vector
    torch.testing.assert_close(dirty, expected, atol=1e-5, rtol=0)


def _pattern_width(model):
    return model.to_tokens(PROMPT).shape[1]


BAD_SITES = [
    ("`positions='generated'` at `attn.hook_pattern` (batch, head, q_pos, k_pos)", "blocks.1.attn.hook_pattern",
     {"positions": "generated"}, ValueError, "key_pos"),
    ("explicit `positions` at `attn.hook_attn_scores`", "blocks.1.attn.hook_attn_scores",
     {"positions": [1]}, ValueError, "key_pos"),
    ("`per_token` coefficients at `attn.hook_pattern`", "blocks.1.attn.hook_pattern",
     {"per_token": torch.ones(64)}, ValueError, "key_pos"),
]


@pytest.mark.parametrize("what, site, kwargs, error, match", BAD_SITES, ids=[row[0] for row in BAD_SITES])
def test_position_dependent_steering_is_refused_where_there_is_no_token_axis(steerable, what, site, kwargs,
                                                                             error, match):
    model = steerable
    v = vector(site, _pattern_width(model))
    with pytest.raises(error, match=match):
        with hs.steer(model, v, **kwargs):
            model(model.to_tokens(PROMPT))
    assert no_hooks_left(model)


def test_constant_steering_at_the_pattern_still_works(tiny_llama):
    """positions='all' with a constant coefficient needs no token axis and stays allowed."""
    model, site = tiny_llama, "blocks.1.attn.hook_pattern"
    tokens = model.to_tokens(PROMPT)
    v = vector(site, tokens.shape[1])
    clean = recorded(model, tokens, site)
    with hs.steer(model, v):
        dirty = recorded(model, tokens, site)
    torch.testing.assert_close(dirty, clean + v.vector, atol=1e-6, rtol=0)


# ============================================================================ item 3: out-of-order exits, threads
def test_out_of_order_exit_removes_exactly_its_own_hooks(steerable):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    a, b = vector(RESID, model.cfg.d_model, seed=1), vector(RESID, model.cfg.d_model, seed=2)
    clean = recorded(model, tokens, RESID)
    cm_a, cm_b = hs.steer(model, a), hs.steer(model, b)
    cm_a.__enter__()
    handle_b = cm_b.__enter__()
    cm_a.__exit__(None, None, None)
    torch.testing.assert_close(recorded(model, tokens, RESID), clean + b.vector, atol=1e-5, rtol=0)
    assert active_steering(model) == [handle_b]
    cm_b.__exit__(None, None, None)
    assert torch.equal(recorded(model, tokens, RESID), clean)
    assert no_hooks_left(model) and active_steering(model) == []


def test_an_inner_model_hooks_context_does_not_remove_steering(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    v = vector(RESID, model.cfg.d_model, seed=3)
    clean = recorded(model, tokens, RESID)
    with hs.steer(model, v):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda act, hook: None)]):
            pass
        torch.testing.assert_close(recorded(model, tokens, RESID), clean + v.vector, atol=1e-5, rtol=0)
    assert no_hooks_left(model)


def _run_threads(targets):
    errors = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)
        return run

    threads = [threading.Thread(target=guarded(fn)) for fn in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def test_two_threads_steering_one_model_each_get_their_own_vector(steerable):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    vectors = [vector(RESID, model.cfg.d_model, seed=s, scale=5.0) for s in (4, 5)]
    expected = []
    for v in vectors:
        with hs.steer(model, v):
            expected.append(model(tokens).detach())
    wrong = [0, 0]

    def worker(i):
        def run():
            for _ in range(20):
                with hs.steer(model, vectors[i]):
                    time.sleep(0.001)
                    if not torch.allclose(model(tokens), expected[i], atol=1e-5):
                        wrong[i] += 1
        return run

    _run_threads([worker(0), worker(1)])
    assert wrong == [0, 0]
    assert no_hooks_left(model)


def test_an_unsteered_generation_next_to_a_steering_thread_is_never_steered(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    v = vector(RESID, model.cfg.d_model, seed=6, scale=20.0)
    plain_text = generate_texts(model, [PROMPT], max_new_tokens=4, chat=False)
    plain_logits = model(tokens).detach()
    stop = threading.Event()
    texts, raw = [], {"clean": 0, "refused": 0, "steered": 0}

    def steering():
        while not stop.is_set():
            with hs.steer(model, v):
                model(tokens)
                time.sleep(0.002)

    def plain():
        try:
            for _ in range(6):
                texts.append(generate_texts(model, [PROMPT], max_new_tokens=4, chat=False))
            for _ in range(20):
                try:
                    logits = model(tokens)
                except SteeringThreadError:
                    raw["refused"] += 1
                    continue
                raw["clean" if torch.equal(logits, plain_logits) else "steered"] += 1
        finally:
            stop.set()

    _run_threads([steering, plain])
    assert texts == [plain_text] * 6
    assert raw["steered"] == 0
    assert no_hooks_left(model)


def test_a_foreign_thread_forward_is_refused_with_a_clear_error(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    outcome = []

    def other():
        try:
            model(tokens)
            outcome.append("ran")
        except SteeringThreadError as error:
            outcome.append(str(error))

    with hs.steer(model, vector(RESID, model.cfg.d_model)):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=60)
    assert len(outcome) == 1 and "another thread" in outcome[0]


# ============================================================================ item 4: non-finite scalars
def _gate_returning(value):
    return lambda activation: torch.full(activation.shape[:-1], value)


BAD_SCALARS = [
    ("`steer(..., coefficient=inf)`", lambda m, v: hs.steer(m, v, coefficient=float("inf")), ValueError, "finite"),
    ("`steer(..., coefficient=nan)`", lambda m, v: hs.steer(m, v, coefficient=float("nan")), ValueError, "finite"),
    ("`add_vector(v, nan)`", lambda m, v: add_vector(v, float("nan")), ValueError, "finite"),
    ("`add_gated(v, gate, coefficient=-inf)`", lambda m, v: add_gated(v, hs.ReluGate(torch.ones(v.d_model)),
                                                                      float("-inf")), ValueError, "finite"),
    ("a `per_token` callable returning NaN", lambda m, v: hs.steer(m, v, per_token=lambda pos: pos * float("nan")),
     ValueError, "NaN/inf"),
    ("a gate returning NaN", lambda m, v: hs.steer(m, v, gate=_gate_returning(float("nan"))), ValueError, "NaN/inf"),
    ("a gate returning inf", lambda m, v: hs.steer(m, v, gate=_gate_returning(float("inf"))), ValueError, "NaN/inf"),
    ("`PSR.steer(alpha=nan)`", lambda m, v: _psr(m).steer(m, alpha=float("nan")), ValueError, "finite"),
    ("`PSR.steer(alpha=inf)`", lambda m, v: _psr(m).steer(m, alpha=float("inf")), ValueError, "finite"),
]


def _psr(model):
    from hooksteer.psr import PSR, PSRConfig

    return PSR(PSRConfig(layers=[1], d_model=model.cfg.d_model))


@pytest.mark.parametrize("what, make, error, match", BAD_SCALARS, ids=[row[0] for row in BAD_SCALARS])
def test_non_finite_scalars_are_refused(tiny_llama, what, make, error, match):
    model = tiny_llama
    v = vector(RESID, model.cfg.d_model)
    with pytest.raises(error, match=match):
        made = make(model, v)
        if hasattr(made, "__enter__"):
            with made:
                model(model.to_tokens(PROMPT))
    assert no_hooks_left(model)


# ============================================================================ item 5: inputs longer than the context
BAD_LENGTHS = [
    ("a prompt longer than the context (`n_ctx`)", lambda m: ("word " * (2 * m.cfg.n_ctx), 4), ValueError, "n_ctx"),
    ("prompt + `max_new_tokens` past the context", lambda m: (PROMPT, m.cfg.n_ctx), ValueError, "n_ctx"),
]


@pytest.mark.parametrize("what, make, error, match", BAD_LENGTHS, ids=[row[0] for row in BAD_LENGTHS])
def test_inputs_longer_than_the_context_are_refused_up_front(steerable, what, make, error, match):
    model = steerable
    prompt, max_new_tokens = make(model)
    calls = []
    with model.hooks(fwd_hooks=[(RESID, lambda act, hook: calls.append(1))]):
        with pytest.raises(error, match=match):
            generate_texts(model, [prompt], max_new_tokens=max_new_tokens, chat=False)
    assert calls == [], "the model ran before the length was checked"


def test_a_prompt_that_fits_exactly_is_accepted(tiny_llama):
    model = tiny_llama
    n_prompt = model.to_tokens(PROMPT).shape[1]
    generate_texts(model, [PROMPT], max_new_tokens=model.cfg.n_ctx - n_prompt, chat=False, stop_at_eos=True)


# ============================================================================ item 9: smaller
BAD_POSITIONS = [
    ("`positions=[1000]` (past `n_ctx`: never reached)", {"positions": [1000]}, ValueError, "n_ctx"),
    ("`positions=[0.5]` (not an integer)", {"positions": [0.5]}, TypeError, "integer"),
    ("`positions=torch.tensor([0.5])`", {"positions": torch.tensor([0.5])}, TypeError, "integer"),
    ("`positions=[True]`", {"positions": [True]}, TypeError, "integer"),
    ("nested `positions=[[1, 2], [3, 4]]`", {"positions": [[1, 2], [3, 4]]}, ValueError, "flat"),
    ("`positions=[-1]`", {"positions": [-1]}, ValueError, ">= 0"),
    ("`positions=[]`", {"positions": []}, ValueError, "empty"),
    ("`positions='everywhere'`", {"positions": "everywhere"}, ValueError, "positions must be one of"),
]


@pytest.mark.parametrize("what, kwargs, error, match", BAD_POSITIONS, ids=[row[0] for row in BAD_POSITIONS])
def test_bad_positions_are_refused(tiny_llama, what, kwargs, error, match):
    v = vector(RESID, tiny_llama.cfg.d_model)
    with pytest.raises(error, match=match):
        with hs.steer(tiny_llama, v, **kwargs):
            pass
    assert no_hooks_left(tiny_llama)


def test_positions_never_reached_in_the_block_warn_on_exit(tiny_llama):
    model = tiny_llama
    v = vector(RESID, model.cfg.d_model)
    with pytest.warns(UserWarning, match=r"\[100\] were never reached"):
        with hs.steer(model, v, positions=[2, 100]):
            model(model.to_tokens(PROMPT))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with hs.steer(model, v, positions=[2]):
            model(model.to_tokens(PROMPT))


BAD_VECTORS = [
    ("a vector on the `meta` device", lambda: hs.SteeringVector(RESID, torch.empty(32, device="meta")),
     ValueError, "meta"),
    ("a raw `meta` tensor given to `add_vector`", lambda: add_vector(torch.empty(32, device="meta")),
     ValueError, "meta"),
]


@pytest.mark.parametrize("what, make, error, match", BAD_VECTORS, ids=[row[0] for row in BAD_VECTORS])
def test_bad_vectors_are_refused(what, make, error, match):
    with pytest.raises(error, match=match):
        make()


BAD_GENERATION = [
    ("`generate_texts(do_sample=True, temperature=0)`", {"do_sample": True, "temperature": 0.0}, ValueError,
     "temperature"),
    ("`generate_texts(do_sample=True, temperature=-1)`", {"do_sample": True, "temperature": -1.0}, ValueError,
     "temperature"),
    ("`generate_texts(do_sample=True, temperature=nan)`", {"do_sample": True, "temperature": float("nan")},
     ValueError, "temperature"),
    ("`generate_texts(max_new_tokens=0)`", {"max_new_tokens": 0}, ValueError, "max_new_tokens"),
]


@pytest.mark.parametrize("what, kwargs, error, match", BAD_GENERATION, ids=[row[0] for row in BAD_GENERATION])
def test_bad_generation_settings_are_refused(tiny_llama, what, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate_texts(tiny_llama, [PROMPT], chat=False, **{"max_new_tokens": 3, **kwargs})


def test_generate_texts_seed_leaves_the_global_rng_alone(tiny_llama):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = generate_texts(tiny_llama, [PROMPT], max_new_tokens=5, chat=False, do_sample=True, seed=7)
    assert torch.equal(torch.rand(3), expected), "generate_texts(seed=...) reseeded the global torch RNG"
    torch.manual_seed(999)
    assert generate_texts(tiny_llama, [PROMPT], max_new_tokens=5, chat=False, do_sample=True, seed=7) == first


#: For the README's Guarantees table: title -> (rows, how a row is refused; None: the exception in the row).
GUARANTEE_TABLES = {
    "steering site without a token axis": (BAD_SITES, None),
    "non-finite scalars": (BAD_SCALARS, None),
    "context length (`generate_texts`)": (BAD_LENGTHS, None),
    "`positions`": (BAD_POSITIONS, None),
    "vectors": (BAD_VECTORS, None),
    "generation settings": (BAD_GENERATION, None),
}
