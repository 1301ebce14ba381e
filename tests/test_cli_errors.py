"""Every user error of every CLI command: exit code 2 and exactly one short line
``hooksteer COMMAND: error: ...`` on stderr, before any model is loaded or any file written
(issue 14, items 2 and 6).

Each ``BAD_*`` table is a part of the README's *Guarantees* table (``benchmarks/guarantees_table.py``):
``(what was tried, arguments, fragment of the error line, whether the model may be loaded first)``.
Placeholders in the arguments: ``{out}`` a fresh output path, ``{file}`` an existing text file, ``{dir}`` an
existing folder, ``{blocked}`` a path below a file, ``{missing}`` a path that does not exist, and the
fixture files of :func:`cli_env`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hooksteer as hs
from hooksteer import cli
from hooksteer.data.schema import SteeringExample

SITE = "blocks.1.hook_resid_post"


def _model_gguf_header(path, n_layers, d_model):
    """A GGUF "model" with just the header fields export-gguf reads (block count, width) and one tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(n_layers)
    writer.add_embedding_length(d_model)
    writer.add_tensor("token_embd.weight", np.zeros((4, d_model), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cli_env(tmp_path, monkeypatch, tiny_llama, tiny_bridge):
    """Input files for the tables, and model loaders that return tiny models and record that they ran."""
    files = {"out": tmp_path / "out", "dir": tmp_path / "a_folder", "file": tmp_path / "a_file.txt",
             "missing": tmp_path / "missing.txt"}
    files["dir"].mkdir()
    files["file"].write_text("one line\nanother line\n")
    files["blocked"] = files["file"] / "below"
    files["empty"] = tmp_path / "empty.txt"
    files["empty"].write_text("\n  \n")
    examples = [SteeringExample("volcano", "Talk about volcanoes.", "Tell me about your day.", "Lava!")] * 2
    files["examples"] = tmp_path / "examples.jsonl"
    files["examples"].write_text("\n".join(json.dumps(e.to_dict()) for e in examples))
    files["two_concepts"] = tmp_path / "two.jsonl"
    files["two_concepts"].write_text("\n".join(json.dumps({**e.to_dict(), "concept_id": f"c{i}"})
                                               for i, e in enumerate(examples)))
    files["bad_jsonl"] = tmp_path / "bad.jsonl"
    files["bad_jsonl"].write_text('{"concept_id": "x"\n')
    files["bad_json"] = tmp_path / "bad.json"
    files["bad_json"].write_text("{not json")
    for name, content in {"run": {"variant": "no_context", "n_blocks": 1, "loss": "ce"},
                          "run_distill": {"variant": "no_context", "n_blocks": 1, "loss": "distill"},
                          "run_data": {"loss": "distill", "data": [1]},
                          "run_data_field": {"loss": "distill", "data": {"train_concepts": 0}},
                          "run_list": [1, 2], "run_unknown": {"bogus_field": 1}, "run_variant": {"variant": "x"},
                          "run_blocks": {"n_blocks": -1}, "run_model": {"model": 5},
                          "run_fraction": {"eval_fraction": 2},
                          "run_no_file": {"loss": "ce", "examples": str(tmp_path / "nowhere.jsonl")}}.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(content))
    files["vector"] = hs.SteeringVector(SITE, torch.ones(32)).save(tmp_path / "v.safetensors")
    files["wide"] = hs.SteeringVector(SITE, torch.ones(64)).save(tmp_path / "wide.safetensors")
    files["far"] = hs.SteeringVector("blocks.99.hook_resid_post", torch.ones(32)).save(tmp_path / "far.safetensors")
    tampered = tmp_path / "tampered.safetensors"
    from safetensors.torch import save_file

    save_file({"vector.0": torch.ones(32)}, str(tampered),
              metadata={"format": "hooksteer.steering", "vectors": json.dumps({"hook_name": SITE})})
    files["tampered"] = tampered
    files["block0"] = hs.SteeringVector("blocks.0.hook_resid_post", torch.ones(32)).save(tmp_path / "b0.safetensors")
    files["attn"] = hs.SteeringVector("blocks.1.hook_attn_out", torch.ones(32)).save(tmp_path / "attn.safetensors")
    files["model_gguf"] = _model_gguf_header(tmp_path / "model.gguf", n_layers=3, d_model=32)
    from hooksteer.llamacpp import export_gguf
    from hooksteer.psr import PSR, PSRConfig

    files["control_vector"] = export_gguf(hs.SteeringVector(SITE, torch.ones(32)), tmp_path / "cv.gguf")
    files["psr"] = PSR(PSRConfig(layers=[1], d_model=32)).save(tmp_path / "psr")
    files["long"] = "word " * 400
    loads = []

    def loader(model):
        def load(*args, **kwargs):
            loads.append(args)
            return model
        return load

    monkeypatch.setattr("hooksteer.models.load_model", loader(tiny_llama))
    monkeypatch.setattr("hooksteer.models.load_bridge", loader(tiny_bridge))
    monkeypatch.setattr("hooksteer.hypersteer.run.load_base_model", loader(tiny_llama))
    return {"files": {k: str(v) for k, v in files.items()}, "loads": loads, "tmp": tmp_path}


def run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse errors exit from parse_args
        code = exit_.code
    return code, capsys.readouterr().err


def check_refused(cli_env, capsys, command, argv, fragment, model_first):
    argv = [part.format(**cli_env["files"]) for part in argv]
    before = sorted(p.relative_to(cli_env["tmp"]) for p in cli_env["tmp"].rglob("*"))
    code, err = run_cli([command, *argv], capsys)
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {err!r}"
    assert lines[0].startswith(f"hooksteer {command}: error: "), lines[0]
    assert len(lines[0]) <= 300, f"{len(lines[0])} characters"
    assert fragment.lower() in lines[0].lower(), lines[0]
    if not model_first:
        assert cli_env["loads"] == [], "the model was loaded before the arguments were checked"
    after = sorted(p.relative_to(cli_env["tmp"]) for p in cli_env["tmp"].rglob("*"))
    assert after == before, "a refused command wrote files"


BAD_DEMO = [
    ("`--max-new-tokens 0`", ["--max-new-tokens", "0"], "--max-new-tokens", False),
    ("`--coefficient nan`", ["--coefficient", "nan"], "--coefficient", False),
    ("`--coefficient inf`", ["--coefficient", "inf"], "--coefficient", False),
    ("`--layer -1`", ["--layer", "-1"], "--layer", False),
    ("`--layer abc`", ["--layer", "abc"], "invalid int", False),
    ("`--positions everywhere`", ["--positions", "everywhere"], "invalid choice", False),
    ("unknown `--contrast-set`", ["--contrast-set", "nope"], "contrast-set", False),
    ("empty `--prompt`", ["--prompt", " "], "--prompt is empty", False),
    ("`--hypersteer-steps -5`", ["--hypersteer-steps", "-5"], "--hypersteer-steps", False),
    ("`--hypersteer-fit-positions later`", ["--hypersteer-fit-positions", "later"], "--hypersteer-fit-positions",
     False),
    ("`--out` below a file", ["--out", "{blocked}"], "is a file", False),
    ("`--out` is a file", ["--out", "{file}"], "is a file", False),
    ("`--layer 99` (past the model's layers)", ["--layer", "99", "--no-hypersteer", "--out", "{out}"],
     "unknown hook name", True),
]
BAD_DIFFMEAN = [
    ("no contrast source", ["--hook", SITE, "--out", "{out}/v.safetensors"], "--contrast-set", False),
    ("missing `--hook`", ["--contrast-set", "love_hate", "--out", "{out}/v.safetensors"], "--hook", False),
    ("`--positive` does not exist", ["--hook", SITE, "--positive", "{missing}", "--negative", "{file}", "--out",
                                     "{out}/v.safetensors"], "does not exist", False),
    ("a folder as `--positive`", ["--hook", SITE, "--positive", "{dir}", "--negative", "{file}", "--out",
                                  "{out}/v.safetensors"], "is a folder", False),
    ("an empty `--negative` file", ["--hook", SITE, "--positive", "{file}", "--negative", "{empty}", "--out",
                                    "{out}/v.safetensors"], "holds no text", False),
    ("unknown `--contrast-set`", ["--hook", SITE, "--contrast-set", "nope", "--out", "{out}/v.safetensors"],
     "contrast-set", False),
    ("`--out` is a folder", ["--hook", SITE, "--contrast-set", "love_hate", "--out", "{dir}"], "is a folder", False),
    ("`--out` below a file", ["--hook", SITE, "--contrast-set", "love_hate", "--out", "{blocked}/v.safetensors"],
     "is a file", False),
    ("unknown `--hook`", ["--hook", "blocks.99.hook_resid_post", "--contrast-set", "love_hate", "--out",
                          "{out}/v.safetensors"], "unknown hook name", True),
]
BAD_GENERATE = [
    ("`--vector` does not exist", ["--vector", "{missing}", "--prompt", "hi"], "does not exist", False),
    ("a folder as `--vector`", ["--vector", "{dir}", "--prompt", "hi"], "is a folder", False),
    ("`--vector` is not safetensors", ["--vector", "{file}", "--prompt", "hi"], "not a valid safetensors", False),
    ("`--vector` with tampered metadata", ["--vector", "{tampered}", "--prompt", "hi"], "list", False),
    ("`--coefficient nan`", ["--vector", "{vector}", "--prompt", "hi", "--coefficient", "nan"], "--coefficient",
     False),
    ("`--max-new-tokens 0`", ["--vector", "{vector}", "--prompt", "hi", "--max-new-tokens", "0"],
     "--max-new-tokens", False),
    ("empty `--prompt`", ["--vector", "{vector}", "--prompt", ""], "--prompt is empty", False),
    ("missing `--prompt`", ["--vector", "{vector}"], "--prompt", False),
    ("a vector for another `d_model`", ["--vector", "{wide}", "--prompt", "hi"], "another model", True),
    ("a vector at an unknown hook", ["--vector", "{far}", "--prompt", "hi"], "unknown hook name", True),
    ("a prompt longer than the context", ["--vector", "{vector}", "--prompt", "{long}"], "n_ctx", True),
]
BAD_EVALUATE = [
    ("`--batch-size 0`", ["--batch-size", "0", "--out", "{out}"], "--batch-size", False),
    ("`--concepts -3`", ["--concepts", "-3", "--out", "{out}"], "--concepts", False),
    ("`--prompts -1`", ["--prompts", "-1", "--out", "{out}"], "--prompts", False),
    ("`--prompts 1` (two halves needed)", ["--prompts", "1", "--out", "{out}"], "--prompts", False),
    ("`--negatives -2`", ["--negatives", "-2", "--out", "{out}"], "--negatives", False),
    ("`--factors abc`", ["--factors", "abc", "--out", "{out}"], "--factors", False),
    ("`--factors 0.1,nan`", ["--factors", "0.1,nan", "--out", "{out}"], "finite", False),
    ("`--factors 0.1,0.1`", ["--factors", "0.1,0.1", "--out", "{out}"], "duplicates", False),
    ("unknown method", ["--methods", "prompt,bogus", "--out", "{out}"], "unknown method", False),
    ("`--methods prefix --model-class hooked`", ["--methods", "prefix", "--model-class", "hooked", "--out", "{out}"],
     "--model-class bridge", False),
    ("`--max-new-tokens 0`", ["--max-new-tokens", "0", "--out", "{out}"], "--max-new-tokens", False),
    ("`--sample --temperature 0`", ["--sample", "--temperature", "0", "--out", "{out}"], "--temperature", False),
    ("`--layer -1`", ["--layer", "-1", "--out", "{out}"], "--layer", False),
    ("`--out` is a file", ["--out", "{file}"], "is a file", False),
    ("`--out` below a file", ["--out", "{blocked}"], "is a file", False),
]
BAD_TRAIN_HYPERSTEER = [
    ("run file does not exist", ["{missing}"], "does not exist", False),
    ("a folder as run file", ["{dir}"], "is a folder", False),
    ("run file is not JSON", ["{bad_json}"], "not valid JSON", False),
    ("run file is a JSON list", ["{run_list}"], "JSON object", False),
    ("unknown config field", ["{run_unknown}", "--examples", "{examples}"], "unknown", False),
    ("unknown `variant`", ["{run_variant}", "--examples", "{examples}"], "variant", False),
    ("`n_blocks: -1`", ["{run_blocks}", "--examples", "{examples}"], "n_blocks", False),
    ("`model` is a number", ["{run_model}", "--examples", "{examples}"], "'model' must be a string", False),
    ("`eval_fraction: 2`", ["{run_fraction}", "--examples", "{examples}"], "eval_fraction", False),
    ("`loss: ce` without examples", ["{run}"], "examples", False),
    ("examples with `loss: distill`", ["{run_distill}", "--examples", "{examples}"], "loss='ce'", False),
    ("`data` is a list", ["{run_data}"], "'data' must be a JSON object", False),
    ("`data.train_concepts: 0`", ["{run_data_field}"], "train_concepts", False),
    ("examples file does not exist", ["{run_no_file}"], "does not exist", False),
    ("`--out` below a file", ["{run}", "--examples", "{examples}", "--out", "{blocked}"], "is a file", False),
    ("`--resume` folder does not exist", ["{run}", "--examples", "{examples}", "--resume", "{missing}"],
     "checkpoint", False),
]
BAD_TRAIN_PSR = [
    ("`--examples` does not exist", ["--examples", "{missing}", "--out", "{out}"], "does not exist", False),
    ("a folder as `--examples`", ["--examples", "{dir}", "--out", "{out}"], "is a folder", False),
    ("malformed examples", ["--examples", "{bad_jsonl}", "--out", "{out}"], "not a SteeringExample", False),
    ("several concepts, no `--concept`", ["--examples", "{two_concepts}", "--out", "{out}"], "several concepts",
     False),
    ("`--steps -1`", ["--examples", "{examples}", "--steps", "-1", "--out", "{out}"], "--steps", False),
    ("`--lr 0`", ["--examples", "{examples}", "--lr", "0", "--out", "{out}"], "--lr", False),
    ("`--lr nan`", ["--examples", "{examples}", "--lr", "nan", "--out", "{out}"], "--lr", False),
    ("`--batch-size 0`", ["--examples", "{examples}", "--batch-size", "0", "--out", "{out}"], "--batch-size", False),
    ("`--regulariser -1`", ["--examples", "{examples}", "--regulariser", "-1", "--out", "{out}"], "--regulariser",
     False),
    ("`--max-response-tokens 0`", ["--examples", "{examples}", "--max-response-tokens", "0", "--out", "{out}"],
     "--max-response-tokens", False),
    ("`--threads 0`", ["--examples", "{examples}", "--threads", "0", "--out", "{out}"], "--threads", False),
    ("`--layer -2`", ["--examples", "{examples}", "--layer", "-2", "--out", "{out}"], "--layer", False),
    ("`--out` below a file", ["--examples", "{examples}", "--out", "{blocked}"], "is a file", False),
    ("`--layer 99` (past the model's layers)", ["--examples", "{examples}", "--model", "tiny:llama", "--layer", "99",
                                                "--out", "{out}"], "outside", True),
]
BAD_TRAIN_SAE = [
    ("`--settings` does not exist", ["--settings", "{missing}", "--out", "{out}"], "does not exist", False),
    ("a folder as `--settings`", ["--settings", "{dir}", "--out", "{out}"], "is a folder", False),
    ("`--settings` is not JSON", ["--settings", "{bad_json}", "--out", "{out}"], "not valid JSON", False),
    ("`--d-sae 0`", ["--d-sae", "0", "--out", "{out}"], "--d-sae", False),
    ("`--k -1`", ["--k", "-1", "--out", "{out}"], "--k", False),
    ("`--tokens 0`", ["--tokens", "0", "--out", "{out}"], "--tokens", False),
    ("`--lr -1`", ["--lr", "-1", "--out", "{out}"], "--lr", False),
    ("`--k` larger than `--d-sae`", ["--k", "64", "--d-sae", "32", "--out", "{out}"], "cannot exceed", False),
    ("unknown `--architecture`", ["--architecture", "nope", "--out", "{out}"], "invalid choice", False),
    ("`--out` is a file", ["--out", "{file}"], "is a file", False),
    ("`--out` below a file", ["--out", "{blocked}"], "is a file", False),
]
CV = ["--out", "{out}/cv.gguf"]
BAD_EXPORT_GGUF = [
    ("`VECTOR` does not exist", ["{missing}", *CV], "does not exist", False),
    ("a plain folder as `VECTOR`", ["{dir}", *CV], "is a folder", False),
    ("`VECTOR` is not safetensors", ["{file}", *CV], "not a valid safetensors", False),
    ("a llama.cpp `.gguf` as `VECTOR`", ["{control_vector}", *CV], "not a valid safetensors", False),
    ("`VECTOR` with tampered metadata", ["{tampered}", *CV], "list", False),
    ("a saved PSR as `VECTOR` (per-token gate)", ["{psr}", *CV], "saved PSR", False),
    ("a vector at block 0's output", ["{block0}", *CV], "block 0's output", False),
    ("a vector at an attention site", ["{attn}", *CV], "residual stream", False),
    ("missing `--out`", ["{vector}"], "--out", False),
    ("`--out` is a folder", ["{vector}", "--out", "{dir}"], "is a folder", False),
    ("`--out` below a file", ["{vector}", "--out", "{blocked}/cv.gguf"], "is a file", False),
    ("`--out` is `VECTOR` itself", ["{vector}", "--out", "{vector}"], "input", False),
    ("`--out` is `--model-gguf`", ["{vector}", "--out", "{model_gguf}", "--model-gguf", "{model_gguf}"], "input",
     False),
    ("`--scale nan`", ["{vector}", *CV, "--scale", "nan"], "--scale", False),
    ("`--scale inf`", ["{vector}", *CV, "--scale", "inf"], "--scale", False),
    ("`--scale abc`", ["{vector}", *CV, "--scale", "abc"], "invalid float", False),
    ("`--scale 1e39` (float32 overflow)", ["{vector}", *CV, "--scale", "1e39"], "overflows", False),
    ("`--model-gguf` does not exist", ["{vector}", *CV, "--model-gguf", "{missing}"], "does not exist", False),
    ("a folder as `--model-gguf`", ["{vector}", *CV, "--model-gguf", "{dir}"], "is a folder", False),
    ("`--model-gguf` is not GGUF", ["{vector}", *CV, "--model-gguf", "{file}"], "not a GGUF file", False),
    ("a control vector as `--model-gguf`", ["{vector}", *CV, "--model-gguf", "{control_vector}"], "not a model",
     False),
    ("a vector for another `d_model`", ["{wide}", *CV, "--model-gguf", "{model_gguf}"], "d_model=32", False),
    ("a vector past the model's blocks", ["{far}", *CV, "--model-gguf", "{model_gguf}"], "outside the model's",
     False),
]

_IDS = lambda table: [row[0] for row in table]  # noqa: E731
COMMAND_TABLES = {"demo": BAD_DEMO, "diffmean": BAD_DIFFMEAN, "generate": BAD_GENERATE, "evaluate": BAD_EVALUATE,
                  "train-hypersteer": BAD_TRAIN_HYPERSTEER, "train-psr": BAD_TRAIN_PSR, "train-sae": BAD_TRAIN_SAE,
                  "export-gguf": BAD_EXPORT_GGUF}


def _refusal_test(command):
    """One test per subcommand, walking that command's table of bad invocations."""
    table = COMMAND_TABLES[command]

    @pytest.mark.parametrize("what, argv, fragment, model_first", table, ids=_IDS(table))
    def test(cli_env, capsys, what, argv, fragment, model_first):
        check_refused(cli_env, capsys, command, argv, fragment, model_first)

    test.__name__ = f"test_{command.replace('-', '_')}_refuses_bad_invocations"
    return test


test_demo_refuses_bad_invocations = _refusal_test("demo")
test_diffmean_refuses_bad_invocations = _refusal_test("diffmean")
test_generate_refuses_bad_invocations = _refusal_test("generate")
test_evaluate_refuses_bad_invocations = _refusal_test("evaluate")
test_train_hypersteer_refuses_bad_invocations = _refusal_test("train-hypersteer")
test_train_psr_refuses_bad_invocations = _refusal_test("train-psr")
test_train_sae_refuses_bad_invocations = _refusal_test("train-sae")
test_export_gguf_refuses_bad_invocations = _refusal_test("export-gguf")


def test_no_command_and_unknown_command_are_one_line(capsys):
    for argv in ([], ["frobnicate"]):
        code, err = run_cli(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("hooksteer: error: "), err


def test_a_failed_evaluate_leaves_the_earlier_run_records_untouched(cli_env, capsys):
    """Item 2: `evaluate --batch-size 0` used to replace config.json and split.json next to old results."""
    out = Path(cli_env["files"]["out"])
    out.mkdir()
    records = {name: f'{{"earlier run": "{name}"}}' for name in ("config.json", "split.json", "results.json")}
    for name, text in records.items():
        (out / name).write_text(text)
    code, err = run_cli(["evaluate", "--small", "--batch-size", "0", "--out", str(out)], capsys)
    assert code == 2, err
    assert {p.name: p.read_text() for p in out.iterdir()} == records, "the failed run replaced earlier records"
    assert "--batch-size" in err


BAD_MODEL = [
    ("unknown `--model` (TransformerLens knows hundreds of names)", ["--model", "definitely-not-a-model"],
     "not a TransformerLens model name", True),
]


@pytest.mark.parametrize("what, argv, fragment, model_first", BAD_MODEL, ids=_IDS(BAD_MODEL))
def test_an_unknown_model_is_one_short_line_naming_a_few_models(tmp_path, capsys, what, argv, fragment, model_first):
    vector = hs.SteeringVector(SITE, torch.ones(32)).save(tmp_path / "v.safetensors")
    code, err = run_cli(["generate", *argv, "--vector", str(vector), "--prompt", "hi"], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("hooksteer generate: error: ") and fragment in line, err
    assert "in all" in line and len(line) <= 300, line
    with pytest.raises(hs.models.ModelNotInstalledError) as raised:
        hs.load_model("definitely-not-a-model")
    assert len(str(raised.value)) < 400 and "definitely-not-a-model" in str(raised.value)


#: For the README's Guarantees table: title -> (rows, how a row is refused).
GUARANTEE_TABLES = {f"`hooksteer {command}`": (table, "exit 2, one line") for command, table in COMMAND_TABLES.items()}
GUARANTEE_TABLES["model loading (any command)"] = (BAD_MODEL, "exit 2, one line")
