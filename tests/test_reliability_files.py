"""Run records are written atomically, loaders refuse malformed files with their own error, and the leak
check cannot be fooled by spelling (issue 14, items 2, 7 and 8).

Each ``BAD_*`` table below is a part of the README's *Guarantees* table (``benchmarks/guarantees_table.py``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hooksteer as hs
from hooksteer.data.schema import BasePrompt, Concept, SteeringExample
from hooksteer.data.splits import DataLeakError, make_split

RESID = "blocks.1.hook_resid_post"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ============================================================================ item 2: atomic run records
def _write_vector(folder, k, model):
    hs.SteeringVector(RESID, torch.full((8,), float(k))).save(folder / "vector.safetensors")


def _write_set(folder, k, model):
    hs.SteeringSet([hs.SteeringVector(RESID, torch.full((8,), float(k))),
                    hs.SteeringVector("blocks.0.hook_resid_pre", torch.ones(8))]).save(folder / "set.safetensors")


def _toy_split(k=0):
    concepts = [Concept(id=f"c{i}", title=f"Concept {i}") for i in range(10 + k)]
    prompts = [BasePrompt(id=f"p{i}", text=f"Question {i}?") for i in range(10)]
    return make_split(concepts, prompts, seed=0, held_out=2, held_in=2, eval_prompts=3)


def _write_split(folder, k, model):
    _toy_split(k).save(folder / "split.json")


def _write_psr(folder, k, model):
    from hooksteer.psr import PSR, PSRConfig

    psr = PSR(PSRConfig(layers=[1], d_model=8))
    psr.set_layer(1, z=torch.full((8,), float(k)))
    psr.save(folder / "psr")


def _write_hypersteer(folder, k, model):
    from hooksteer.hypersteer import HyperSteer, HyperSteerConfig

    HyperSteer(model, HyperSteerConfig(variant="no_context", n_blocks=1, layer=1, seed=k,
                                       head_init_std=1e-3 * k)).save(folder / "hyper")


def _write_hypersteer_config(folder, k, model):
    from hooksteer.hypersteer import HyperSteerConfig

    HyperSteerConfig(n_blocks=k).save(folder / "hyper_config.json")


def _write_cli_config(folder, k, model):
    from hooksteer.cli import save_config

    save_config(folder, "evaluate", argparse.Namespace(concepts=k))


def _write_results(folder, k, model):
    from hooksteer.evaluate.protocol import EvaluationResult

    EvaluationResult(config={"k": k}, concepts=[], generations=[]).save(folder, plot=False)


ATOMIC_WRITERS = [
    ("`SteeringVector.save`", _write_vector),
    ("`SteeringSet.save`", _write_set),
    ("`DatasetSplit.save`", _write_split),
    ("`PSR.save` (config + weights)", _write_psr),
    ("`HyperSteer.save` (config.json + weights)", _write_hypersteer),
    ("`HyperSteerConfig.save`", _write_hypersteer_config),
    ("the CLI's `config.json` (`save_config`)", _write_cli_config),
    ("`EvaluationResult.save` (results, generations, table)", _write_results),
]


@pytest.mark.parametrize("what, write", ATOMIC_WRITERS, ids=[row[0] for row in ATOMIC_WRITERS])
def test_a_failed_save_keeps_the_earlier_files_and_leaves_no_temporary_file(tmp_path, monkeypatch, tiny_llama,
                                                                            what, write):
    write(tmp_path, 1, tiny_llama)
    before = snapshot(tmp_path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write(tmp_path, 2, tiny_llama)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before, "a failed save changed or added files"
    write(tmp_path, 2, tiny_llama)
    after = snapshot(tmp_path)
    assert after.keys() == before.keys() and after != before


# ============================================================================ item 7: loaders refuse malformed files
def _vector_file(path, *, vectors=None, tensors=None, metadata=None):
    entries = [{"hook_name": RESID, "method": "m", "source": {}}] if vectors is None else vectors
    meta = {"format": "hooksteer.steering", "format_version": "1", "d_model": "8",
            "vectors": entries if isinstance(entries, str) else json.dumps(entries)}
    meta.update(metadata or {})
    meta = {k: v for k, v in meta.items() if v is not None}
    save_file({"vector.0": torch.ones(8)} if tensors is None else tensors, str(path), metadata=meta)


def _write_garbage(path, data):
    Path(path).write_bytes(data)


def _truncated(path):
    _vector_file(path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 10])


BAD_VECTOR_FILES = [
    ("`vectors` metadata is a JSON object", lambda p: _vector_file(p, vectors='{"hook_name": "x"}'), "list"),
    ("`vectors` metadata is a number", lambda p: _vector_file(p, vectors="3"), "list"),
    ("`vectors` metadata is a string", lambda p: _vector_file(p, vectors='"blocks.1"'), "list"),
    ("`vectors` metadata is not JSON", lambda p: _vector_file(p, vectors="{not json"), "metadata"),
    ("`vectors` is an empty list", lambda p: _vector_file(p, vectors=[], tensors={}), "no vectors"),
    ("an entry is a number", lambda p: _vector_file(p, vectors=[1]), "entry 0"),
    ("an entry lacks `hook_name`", lambda p: _vector_file(p, vectors=[{"method": "m"}]), "hook_name"),
    ("`hook_name` is a number", lambda p: _vector_file(p, vectors=[{"hook_name": 5}]), "hook_name"),
    ("`hook_name` is empty", lambda p: _vector_file(p, vectors=[{"hook_name": ""}]), "hook_name"),
    ("`method` is not a string", lambda p: _vector_file(p, vectors=[{"hook_name": RESID, "method": 5}]), "method"),
    ("`source` is a list", lambda p: _vector_file(p, vectors=[{"hook_name": RESID, "source": [1]}]), "source"),
    ("the tensor holds NaN", lambda p: _vector_file(p, tensors={"vector.0": torch.full((8,), float("nan"))}),
     "NaN"),
    ("the tensor is 2-D", lambda p: _vector_file(p, tensors={"vector.0": torch.ones(2, 8)}), "1-D"),
    ("the tensor holds integers", lambda p: _vector_file(p, tensors={"vector.0": torch.ones(8, dtype=torch.int64)}),
     "floating"),
    ("the tensor is empty", lambda p: _vector_file(p, tensors={"vector.0": torch.ones(0)}), "empty"),
    ("a described tensor is missing", lambda p: _vector_file(p, vectors=[{"hook_name": RESID}] * 2), "lacks"),
    ("a tensor is not described", lambda p: _vector_file(p, tensors={"vector.0": torch.ones(8),
                                                                      "vector.1": torch.ones(8)}), "not described"),
    ("header `d_model` disagrees with the tensor", lambda p: _vector_file(p, metadata={"d_model": "9"}), "d_model"),
    ("no `format` field", lambda p: _vector_file(p, metadata={"format": None}), "not a hooksteer"),
    ("random bytes", lambda p: _write_garbage(p, os.urandom(64)), "not a valid safetensors"),
    ("a truncated file", _truncated, "not a valid safetensors"),
    ("a directory instead of a file", lambda p: Path(p).mkdir(), "no steering file"),
]


@pytest.mark.parametrize("what, make, match", BAD_VECTOR_FILES, ids=[row[0] for row in BAD_VECTOR_FILES])
def test_steering_set_load_refuses_malformed_files(tmp_path, what, make, match):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(hs.SteeringFileError, match=match):
        hs.SteeringSet.load(path)


def _saved_hypersteer(folder, model):
    from hooksteer.hypersteer import HyperSteer, HyperSteerConfig

    return HyperSteer(model, HyperSteerConfig(variant="no_context", n_blocks=1, layer=1)).save(folder)


def _edit_config(change):
    def make(folder):
        path = folder / "config.json"
        meta = json.loads(path.read_text())
        meta = change(meta)
        path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return make


def _edit_weights(change):
    def make(folder):
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "model.safetensors"))
        save_file(change(tensors), str(folder / "model.safetensors"))
    return make


def _first_weight_to(value):
    def change(tensors):
        key = sorted(tensors)[0]
        tensors[key] = value(tensors[key])
        return tensors
    return change


BAD_HYPERSTEER_FILES = [
    ("config.json is a list", _edit_config(lambda m: [m]), "not a HyperSteer config"),
    ("config.json is not JSON", _edit_config(lambda m: "{oops"), "not valid JSON"),
    ("`base_model` is a string", _edit_config(lambda m: {**m, "base_model": "SmolLM2"}), "base_model"),
    ("`base_model` lacks `d_model`", _edit_config(lambda m: {**m, "base_model": {"n_layers": 3}}), "d_model"),
    ("`config` is a list", _edit_config(lambda m: {**m, "config": ["variant"]}), "config"),
    ("`config` is a string", _edit_config(lambda m: {**m, "config": "cross_attention"}), "config"),
    ("`config` has an unknown field", _edit_config(lambda m: {**m, "config": {**m["config"], "bogus": 1}}),
     "unknown"),
    ("`config.variant` is unknown", _edit_config(lambda m: {**m, "config": {**m["config"], "variant": "x"}}),
     "variant"),
    ("`config.n_blocks` is a string", _edit_config(lambda m: {**m, "config": {**m["config"], "n_blocks": "1"}}),
     "n_blocks"),
    ("`config.layer` is out of range", _edit_config(lambda m: {**m, "config": {**m["config"], "layer": 99}}),
     "layer"),
    ("made for another `d_model`", _edit_config(lambda m: {**m, "base_model": {**m["base_model"], "d_model": 64}}),
     "another model"),
    ("the weights are missing", lambda folder: (folder / "model.safetensors").unlink(), "no HyperSteer"),
    ("the weights are random bytes", lambda folder: _write_garbage(folder / "model.safetensors", b"x" * 50),
     "not a valid safetensors"),
    ("a weight has the wrong shape", _edit_weights(_first_weight_to(lambda t: torch.ones(*t.shape, 2))), "shape"),
    ("a weight holds NaN", _edit_weights(_first_weight_to(lambda t: torch.full_like(t, float("nan")))), "NaN"),
]


@pytest.mark.parametrize("what, make, match", BAD_HYPERSTEER_FILES, ids=[row[0] for row in BAD_HYPERSTEER_FILES])
def test_hypersteer_load_refuses_malformed_files(tmp_path, tiny_llama, what, make, match):
    from hooksteer.hypersteer import HyperSteer
    from hooksteer.hypersteer.model import HyperSteerFileError

    folder = _saved_hypersteer(tmp_path / "hyper", tiny_llama)
    make(folder)
    with pytest.raises(HyperSteerFileError, match=match):
        HyperSteer.load(folder, tiny_llama)


def _saved_psr(folder, d_model=32):
    from hooksteer.psr import PSR, PSRConfig

    psr = PSR(PSRConfig(layers=[1], d_model=d_model))
    psr.set_layer(1, z=torch.ones(d_model))
    return psr.save(folder)


def _edit_psr_config(change):
    def make(folder):
        path = folder / "psr_config.json"
        config = change(json.loads(path.read_text()))
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    return make


def _edit_psr_weights(change):
    def make(folder):
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "psr.safetensors"))
        save_file(change(tensors), str(folder / "psr.safetensors"), metadata={"format": "hooksteer-psr-1"})
    return make


BAD_PSR_FILES = [
    ("psr_config.json is a list", _edit_psr_config(lambda c: [c]), "config"),
    ("psr_config.json is not JSON", _edit_psr_config(lambda c: "{oops"), "config"),
    ("`d_model` = 2**40 (refused before allocating 4.4 TB)", _edit_psr_config(lambda c: {**c, "d_model": 2**40}),
     "d_model"),
    ("`d_model` is a string", _edit_psr_config(lambda c: {**c, "d_model": "32"}), "d_model"),
    ("`d_model` is 3.5", _edit_psr_config(lambda c: {**c, "d_model": 3.5}), "d_model"),
    ("`d_model` is 0", _edit_psr_config(lambda c: {**c, "d_model": 0}), "d_model"),
    ("`layers` is a string", _edit_psr_config(lambda c: {**c, "layers": "abc"}), "layers"),
    ("`layers` is empty", _edit_psr_config(lambda c: {**c, "layers": []}), "layers"),
    ("a layer the weights lack", _edit_psr_config(lambda c: {**c, "layers": [2]}), "lacks"),
    ("`variant` is unknown", _edit_psr_config(lambda c: {**c, "variant": "x"}), "variant"),
    ("the config is missing", lambda folder: (folder / "psr_config.json").unlink(), "no psr_config.json"),
    ("the weights are random bytes", lambda folder: _write_garbage(folder / "psr.safetensors", b"x" * 50),
     "corrupt"),
    ("a weight has the wrong shape", _edit_psr_weights(lambda t: {**t, "z.1": torch.ones(7)}), "shape"),
    ("a weight holds NaN", _edit_psr_weights(lambda t: {**t, "w.1": torch.full((32,), float("nan"))}), "NaN"),
    ("the bias holds inf", _edit_psr_weights(lambda t: {**t, "b.1": torch.full((1,), float("inf"))}), "NaN"),
]


@pytest.mark.parametrize("what, make, match", BAD_PSR_FILES, ids=[row[0] for row in BAD_PSR_FILES])
def test_psr_load_refuses_malformed_files(tmp_path, what, make, match):
    from hooksteer.psr import PSR
    from hooksteer.psr.model import PSRFileError

    folder = _saved_psr(tmp_path / "psr")
    make(folder)
    with pytest.raises(PSRFileError, match=match):
        PSR.load(folder)


def test_psr_load_checks_the_model_before_allocating(tmp_path, tiny_llama):
    from hooksteer.psr import PSR
    from hooksteer.psr.model import PSRFileError

    folder = _saved_psr(tmp_path / "psr", d_model=16)
    with pytest.raises(PSRFileError, match="d_model"):
        PSR.load(folder, tiny_llama)


# ============================================================================ item 8: the leak check normalises text
def _leaky(change):
    def make(split):
        eval_text = split.meta["prompt_texts"][split.eval_prompts[0]]
        train_text = split.meta["prompt_texts"][split.train_prompts[0]]
        return change(split, eval_text, train_text)
    return make


BAD_EXAMPLES = [
    ("an eval prompt with a trailing space", _leaky(lambda s, e, t: SteeringExample(s.train_concepts[0], "s", e + " ")),
     "eval prompt"),
    ("an eval prompt in other case", _leaky(lambda s, e, t: SteeringExample(s.train_concepts[0], "s", e.upper())),
     "eval prompt"),
    ("an eval prompt with other whitespace",
     _leaky(lambda s, e, t: SteeringExample(s.train_concepts[0], "s", "  " + e.replace(" ", "\n  "))), "eval prompt"),
    ("an eval prompt by id", _leaky(lambda s, e, t: SteeringExample(s.train_concepts[0], "s", "other?",
                                                                   base_prompt_id=s.eval_prompts[0])), "eval prompt"),
    ("a held-out concept", _leaky(lambda s, e, t: SteeringExample(s.held_out_concepts[0], "s", t)),
     "held-out concept"),
    ("a held-out concept id in other case",
     _leaky(lambda s, e, t: SteeringExample(" " + s.held_out_concepts[0].upper(), "s", t)), "held-out concept"),
    ("a concept that is not in the split", _leaky(lambda s, e, t: SteeringExample("not-a-concept", "s", t)),
     "not a training concept"),
]


@pytest.mark.parametrize("what, make, match", BAD_EXAMPLES, ids=[row[0] for row in BAD_EXAMPLES])
def test_check_examples_normalises_before_comparing(what, make, match):
    split = _toy_split()
    with pytest.raises(DataLeakError, match=match):
        split.check_examples([make(split)])


def test_check_examples_accepts_clean_training_examples():
    split = _toy_split()
    text = split.meta["prompt_texts"][split.train_prompts[0]]
    split.check_examples([SteeringExample(split.train_concepts[0], "s", text, base_prompt_id=split.train_prompts[0]),
                          SteeringExample(split.held_in_concepts[0], "s", "A custom question?")])


#: For the README's Guarantees table: title -> (rows, how a row is refused; None: the exception in the row).
GUARANTEE_TABLES = {
    "atomic run records (disk full at `fsync`)": (ATOMIC_WRITERS, "earlier files kept, no temporary file left"),
    "`SteeringSet.load` / `SteeringVector.load`": (BAD_VECTOR_FILES, "`SteeringFileError`"),
    "`HyperSteer.load`": (BAD_HYPERSTEER_FILES, "`HyperSteerFileError`"),
    "`PSR.load`": (BAD_PSR_FILES, "`PSRFileError`"),
    "`DatasetSplit.check_examples` (training examples)": (BAD_EXAMPLES, "`DataLeakError`"),
}
