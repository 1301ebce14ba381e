"""llama.cpp control vectors: export, import, refusals and malformed files (tiny models, no llama.cpp needed)."""

from __future__ import annotations

import json
import struct

import gguf
import numpy as np
import pytest
import torch

import hooksteer as hs
from hooksteer import cli
from hooksteer.hooks import ReluGate
from hooksteer.llamacpp import (
    ControlVectorFileError,
    NotExportableError,
    control_vector_buffer,
    control_vector_layer,
    directions,
    export_gguf,
    load_gguf,
    model_gguf_info,
)
from hooksteer.vectors import SteeringFileError


def _vec(hook: str, seed: int, d: int = 32, dtype: torch.dtype = torch.float32, **kwargs) -> hs.SteeringVector:
    return hs.SteeringVector(hook, torch.randn(d, generator=torch.Generator().manual_seed(seed)).to(dtype), **kwargs)


def _write_gguf(path, arch="controlvector", tensors=None, kv=None):
    writer = gguf.GGUFWriter(path, arch)
    for key, value in (kv or {}).items():
        writer.add_string(key, value)
    for name, array in (tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---------------------------------------------------------------------------- mapping and round trip
def test_layer_mapping_follows_llama_cpp():
    assert control_vector_layer("blocks.1.hook_resid_post") == 1
    assert control_vector_layer("blocks.29.hook_resid_post", n_layers=30) == 29
    assert control_vector_layer("blocks.2.hook_resid_pre") == 1      # same activation as blocks.1 resid_post
    for hook in ("blocks.0.hook_resid_post", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"):
        with pytest.raises(NotExportableError, match="layer 0|never"):
            control_vector_layer(hook)
    for hook in ("hook_embed", "blocks.3.hook_resid_mid", "blocks.3.hook_attn_out", "blocks.3.hook_mlp_out",
                 "blocks.3.attn.hook_z", "ln_final.hook_normalized"):
        with pytest.raises(NotExportableError, match="residual stream after a whole block"):
            control_vector_layer(hook)
    with pytest.raises(NotExportableError, match="outside the model's 30 blocks"):
        control_vector_layer("blocks.30.hook_resid_post", n_layers=30)


def test_round_trip_is_bit_exact(tmp_path, tiny_llama):
    original = hs.SteeringSet([
        _vec("blocks.1.hook_resid_post", 0, method="diffmean", source={"n_positive": 3, "note": "ünïcode"}),
        _vec("blocks.2.hook_resid_post", 1, method="pca"),
    ])
    path = export_gguf(original, tmp_path / "cv.gguf", model=tiny_llama)
    back = load_gguf(path, model=tiny_llama)
    assert len(back) == 2
    for a, b in zip(original, back, strict=True):
        assert b.hook_name == a.hook_name and b.method == a.method and b.source == a.source
        assert b.vector.dtype == torch.float32 and torch.equal(b.vector, a.vector)
    assert not list(tmp_path.glob("*.tmp"))


def test_file_has_the_llama_cpp_and_repeng_layout(tmp_path, tiny_llama):
    path = export_gguf(_vec("blocks.2.hook_resid_post", 0), tmp_path / "cv.gguf", model=tiny_llama)
    reader = gguf.GGUFReader(path)
    field = reader.get_field("general.architecture")
    assert bytes(field.parts[-1]).decode() == "controlvector"
    assert bytes(reader.get_field("controlvector.model_hint").parts[-1]).decode() == "llama"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 1
    (tensor,) = reader.tensors
    assert tensor.name == "direction.2" and tensor.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensor.shape) == [32]


def test_half_precision_vectors_export_exactly_as_float32(tmp_path):
    v = _vec("blocks.1.hook_resid_post", 3, dtype=torch.float16)
    back = load_gguf(export_gguf(v, tmp_path / "cv.gguf"))[0]
    assert torch.equal(back.vector, v.vector.float())


def test_same_layer_vectors_are_summed_and_scaled_like_llama_cpp(tmp_path):
    a, b = _vec("blocks.1.hook_resid_post", 0), _vec("blocks.1.hook_resid_post", 1)
    c = _vec("blocks.2.hook_resid_pre", 2)          # = blocks.1 resid_post as well
    d = _vec("blocks.2.hook_resid_post", 3)
    arrays = directions(hs.SteeringSet([a, b, c, d]), scale=2.0, layer_scales={2: 0.5})
    assert sorted(arrays) == [1, 2]
    np.testing.assert_allclose(arrays[1], 2.0 * (a.vector + b.vector + c.vector).numpy(), rtol=1e-6)
    np.testing.assert_allclose(arrays[2], 1.0 * d.vector.numpy(), rtol=1e-6)
    back = load_gguf(export_gguf([a, b], tmp_path / "cv.gguf"))
    assert len(back) == 1 and back[0].method == "custom"        # one summed direction, contributions kept
    assert len(back[0].source["contributions"]) == 2
    with pytest.raises(ValueError, match="hold no vector"):
        directions(a, layer_scales={5: 2.0})
    with pytest.raises(ValueError, match="finite"):
        directions(a, scale=float("nan"))


def test_loaded_vector_steers_like_the_original(tmp_path, tiny_llama):
    tokens = tiny_llama.to_tokens("the cat sat on the mat")
    original = _vec("blocks.2.hook_resid_pre", 0) * 5.0
    with hs.steer(tiny_llama, original):
        expected = tiny_llama(tokens)
    loaded = load_gguf(export_gguf(original, tmp_path / "cv.gguf", model=tiny_llama), model=tiny_llama)
    assert loaded[0].hook_name == "blocks.1.hook_resid_post"
    with hs.steer(tiny_llama, loaded):
        got = tiny_llama(tokens)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_strength_and_multi_file_buffer_follow_common_cpp(tmp_path):
    a = export_gguf(_vec("blocks.2.hook_resid_post", 0, d=4), tmp_path / "a.gguf")
    b = export_gguf(hs.SteeringSet([_vec("blocks.1.hook_resid_post", 1, d=4), _vec("blocks.2.hook_resid_post", 2, d=4)]),
                    tmp_path / "b.gguf")
    n_embd, data = control_vector_buffer([(a, 0.5), (b, 2.0)])
    assert n_embd == 4 and data.shape == (8,)                  # layers 1 and 2; no slot for layer 0
    va, vb1, vb2 = (load_gguf(a)[0].vector, *(v.vector for v in load_gguf(b)))
    np.testing.assert_allclose(data[:4], (2.0 * vb1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(data[4:], (0.5 * va + 2.0 * vb2).numpy(), rtol=1e-6)
    assert torch.equal(load_gguf(a, strength=0.5)[0].vector, 0.5 * va)


# ---------------------------------------------------------------------------- refusals
def test_refuses_what_llama_cpp_cannot_express(tiny_llama):
    from hooksteer.psr import PSR, PSRConfig

    psr = PSR(PSRConfig(layers=[1], d_model=32))
    with pytest.raises(NotExportableError, match="per token by a gate"):
        export_gguf(psr, "unused.gguf")
    with pytest.raises(NotExportableError, match="fixed vector"):
        export_gguf(ReluGate(torch.ones(32)), "unused.gguf")
    with pytest.raises(NotExportableError, match="one vector per token or per batch row"):
        export_gguf({"blocks.1.hook_resid_post": torch.ones(5, 32)}, "unused.gguf")
    gated = _vec("blocks.1.hook_resid_post", 0, method="psr")
    with pytest.raises(NotExportableError, match="per token"):
        export_gguf(gated, "unused.gguf")
    with pytest.raises(NotExportableError, match="block 0's output"):
        export_gguf(_vec("blocks.0.hook_resid_post", 0), "unused.gguf")
    with pytest.raises(ValueError, match="d_model=32"):
        export_gguf(_vec("blocks.1.hook_resid_post", 0, d=16), "unused.gguf", model=tiny_llama)
    with pytest.raises(NotExportableError, match="outside the model's 3 blocks"):
        export_gguf(_vec("blocks.3.hook_resid_post", 0), "unused.gguf", model=tiny_llama)


def test_hypersteer_vectors_export_only_without_context(tmp_path, tiny_llama):
    from hooksteer.hypersteer import HyperSteer

    plain = HyperSteer(tiny_llama, variant="no_context", n_blocks=1, layer=1)
    v = plain.vector("talk about cats", "hello")
    back = load_gguf(export_gguf(v, tmp_path / "h.gguf"))[0]
    assert torch.equal(back.vector, v.vector.float()) and back.method == "hypersteer"
    with pytest.raises(NotExportableError, match="writes vectors"):
        export_gguf(plain, tmp_path / "x.gguf")
    for variant in ("in_context", "cross_attention"):
        hyper = HyperSteer(tiny_llama, variant=variant, n_blocks=1, layer=1)
        with pytest.raises(NotExportableError, match="depends on the base prompt"):
            export_gguf(hyper.vector("talk about cats", "hello"), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# ---------------------------------------------------------------------------- malformed files
def test_malformed_files_raise_clear_errors(tmp_path):
    good = export_gguf(_vec("blocks.1.hook_resid_post", 0), tmp_path / "good.gguf")
    data = good.read_bytes()
    cases = {
        "missing": (tmp_path / "nope.gguf", "no control-vector file"),
        "empty": (tmp_path / "empty.gguf", "not a GGUF file"),
        "text": (tmp_path / "text.gguf", "not a GGUF file"),
        "short header": (tmp_path / "short.gguf", "truncated"),
        "huge counts": (tmp_path / "huge.gguf", "implausible header"),
        "bad version": (tmp_path / "version.gguf", "unsupported GGUF version"),
    }
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "text.gguf").write_text("import os; os.system('echo hacked')")
    (tmp_path / "short.gguf").write_bytes(data[:10])
    (tmp_path / "huge.gguf").write_bytes(data[:8] + struct.pack("<QQ", 1 << 40, 1) + data[24:])
    (tmp_path / "version.gguf").write_bytes(data[:4] + struct.pack("<I", 99) + data[8:])
    for name, (path, message) in cases.items():
        with pytest.raises(ControlVectorFileError, match=message):
            load_gguf(path)
        assert issubclass(ControlVectorFileError, SteeringFileError), name
    for cut in (30, len(data) // 2, len(data) - 7):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ControlVectorFileError, match="corrupt or truncated|truncated"):
            load_gguf(tmp_path / "cut.gguf")


@pytest.mark.parametrize(
    ("arch", "tensors", "kv", "message"),
    [
        ("llama", {"token_embd.weight": np.ones((4, 8), np.float32)}, {}, "architecture 'llama'"),
        ("controlvector", {"direction.0": np.ones(8, np.float32)}, {}, "direction.0 is invalid"),
        ("controlvector", {"dir.1": np.ones(8, np.float32)}, {}, "not named direction.N"),
        ("controlvector", {"direction.1": np.ones(8, np.float16)}, {}, "only F32"),
        ("controlvector", {"direction.1": np.ones((2, 8), np.float32)}, {}, "1-D"),
        ("controlvector", {"direction.1": np.array([1.0, np.nan, np.inf, 0.0], np.float32)}, {}, "2 NaN/inf"),
        ("controlvector", {"direction.1": np.ones(8, np.float32), "direction.2": np.ones(4, np.float32)}, {},
         "width 4, the others 8"),
        ("controlvector", {}, {}, "no direction tensors"),
        ("controlvector", {"direction.1": np.ones(8, np.float32)}, {"hooksteer.vectors": "{not json"},
         "corrupt hooksteer.vectors"),
    ],
)
def test_invalid_control_vectors_are_rejected(tmp_path, arch, tensors, kv, message):
    path = _write_gguf(tmp_path / "bad.gguf", arch, tensors, kv)
    with pytest.raises(ControlVectorFileError, match=message):
        load_gguf(path)


def test_width_and_depth_must_fit_the_model(tmp_path, tiny_llama):
    path = _write_gguf(tmp_path / "cv.gguf", tensors={"direction.1": np.ones(16, np.float32)})
    with pytest.raises(ControlVectorFileError, match="width 16, but the model has d_model=32"):
        load_gguf(path, model=tiny_llama)
    deep = _write_gguf(tmp_path / "deep.gguf", tensors={"direction.7": np.ones(32, np.float32)})
    with pytest.raises(ControlVectorFileError, match="only 3 blocks"):
        load_gguf(deep, model=tiny_llama)


def test_repeng_style_file_loads(tmp_path):
    direction = np.linspace(-1, 1, 8, dtype=np.float32)
    path = _write_gguf(tmp_path / "repeng.gguf", tensors={"direction.5": direction, "direction.4": -direction},
                       kv={"controlvector.model_hint": "mistral"})
    loaded = load_gguf(path)
    assert [v.hook_name for v in loaded] == ["blocks.4.hook_resid_post", "blocks.5.hook_resid_post"]
    assert loaded[1].method == "controlvector" and loaded[1].source["model_hint"] == "mistral"
    np.testing.assert_array_equal(loaded[1].vector.numpy(), direction)


def test_model_gguf_header_gives_width_and_depth(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    writer.add_block_count(3)
    writer.add_embedding_length(32)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = model_gguf_info(tmp_path / "m.gguf")
    assert (info.n_layers, info.d_model, info.hint) == (3, 32, "llama")
    with pytest.raises(ValueError, match="d_model=32"):
        export_gguf(_vec("blocks.1.hook_resid_post", 0, d=8), tmp_path / "cv.gguf", model=tmp_path / "m.gguf")
    path = export_gguf(_vec("blocks.2.hook_resid_post", 0), tmp_path / "cv.gguf", model=tmp_path / "m.gguf")
    assert load_gguf(path, model=tmp_path / "m.gguf")[0].hook_name == "blocks.2.hook_resid_post"


# ---------------------------------------------------------------------------- command line
def test_export_gguf_command(tmp_path, capsys):
    source = _vec("blocks.2.hook_resid_post", 0, method="diffmean")
    source.save(tmp_path / "v.safetensors")
    assert cli.main(["export-gguf", str(tmp_path / "v.safetensors"), "--out", str(tmp_path / "cv.gguf"),
                     "--scale", "3"]) == 0
    assert "direction.2" in capsys.readouterr().out
    assert torch.equal(load_gguf(tmp_path / "cv.gguf")[0].vector, (source * 3.0).vector)


@pytest.mark.parametrize("kind", ["block0", "psr", "hypersteer", "missing", "corrupt", "scale", "out"])
def test_export_gguf_command_errors(tmp_path, capsys, monkeypatch, tiny_llama, kind):
    monkeypatch.delenv("HOOKSTEER_DEBUG", raising=False)
    path = tmp_path / "in.safetensors"
    if kind == "block0":
        _vec("blocks.0.hook_resid_post", 0).save(path)
        expected = "block 0's output"
    elif kind == "psr":
        from hooksteer.psr import PSR, PSRConfig

        path = PSR(PSRConfig(layers=[1], d_model=32)).save(tmp_path / "psr")
        expected = "saved PSR"
    elif kind == "hypersteer":
        from hooksteer.hypersteer import HyperSteer

        path = HyperSteer(tiny_llama, variant="no_context", n_blocks=1, layer=1).save(tmp_path / "hyper")
        expected = "saved HyperSteer"
    elif kind == "missing":
        expected = "does not exist"
    elif kind == "corrupt":
        path.write_bytes(b"\x00" * 20)
        expected = "not a valid safetensors file"
    else:
        _vec("blocks.1.hook_resid_post", 0).save(path)
        expected = "--scale" if kind == "scale" else "is a folder"
    extra = {"scale": ["--scale", "nan"], "out": []}.get(kind, [])
    out = tmp_path if kind == "out" else tmp_path / "cv.gguf"
    code = cli.main(["export-gguf", str(path), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "hooksteer export-gguf: error: " in err and expected in err, err
    assert not (tmp_path / "cv.gguf").exists()


@pytest.fixture
def tiny_default_model(monkeypatch, tiny_llama):
    monkeypatch.setattr("hooksteer.models.load_model", lambda *args, **kwargs: tiny_llama)
    return tiny_llama


def test_diffmean_command_writes_gguf(tiny_default_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HOOKSTEER_DEBUG", raising=False)
    positive, negative = tmp_path / "pos.txt", tmp_path / "neg.txt"
    positive.write_text("I love it\nlovely day\n")
    negative.write_text("I hate it\nawful day\n")
    args = ["diffmean", "--positive", str(positive), "--negative", str(negative)]
    assert cli.main([*args, "--hook", "blocks.2.hook_resid_post", "--out", str(tmp_path / "v.safetensors"),
                     "--gguf", str(tmp_path / "v.gguf")]) == 0
    saved = hs.SteeringVector.load(tmp_path / "v.safetensors")
    assert torch.equal(load_gguf(tmp_path / "v.gguf")[0].vector, saved.vector)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["settings"]["gguf"] == str(tmp_path / "v.gguf")
    code = cli.main([*args, "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "w.safetensors"),
                     "--gguf", str(tmp_path / "w.gguf")])
    assert code == 2 and "block 0's output" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists() and not (tmp_path / "w.gguf").exists()
