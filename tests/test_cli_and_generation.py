"""CLI commands and batched generation, on tiny models."""

import json

import pytest
import torch

import hooksteer as hs
from hooksteer import cli
from hooksteer.generation import generate_texts


@pytest.fixture
def tiny_default_model(monkeypatch, tiny_llama):
    """Make the CLI's load_model return the tiny model instead of the embedded one."""
    monkeypatch.setattr("hooksteer.models.load_model", lambda *args, **kwargs: tiny_llama)
    return tiny_llama


def test_batched_generation_matches_one_by_one(tiny_llama):
    prompts = ["the cat sat on the mat", "hello"]
    batched = generate_texts(tiny_llama, prompts, max_new_tokens=6, chat=False)
    single = [generate_texts(tiny_llama, [p], max_new_tokens=6, chat=False)[0] for p in prompts]
    assert batched == single


def test_generation_under_steering_changes_text(tiny_llama):
    v = hs.SteeringVector("blocks.1.hook_resid_post", torch.randn(32, generator=torch.Generator().manual_seed(0)))
    plain = generate_texts(tiny_llama, ["the cat sat"], max_new_tokens=8)
    with hs.steer(tiny_llama, v * 20.0, positions="generated"):
        steered = generate_texts(tiny_llama, ["the cat sat"], max_new_tokens=8)
    assert plain != steered


def test_generation_rejects_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="empty"):
        generate_texts(tiny_llama, [], max_new_tokens=3)
    with pytest.raises(ValueError, match="empty prompt"):
        generate_texts(tiny_llama, ["  "], max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_texts(tiny_llama, ["hi"], max_new_tokens=0)


def test_side_by_side_has_one_column_per_generation():
    text = cli.side_by_side("Hi", {"unsteered": "a b c", "steered": "x y z"}, width=40)
    lines = text.splitlines()
    assert lines[0] == "PROMPT: Hi"
    assert "unsteered" in lines[1] and "steered" in lines[1] and "|" in lines[1]
    assert "a b c" in lines[3] and "x y z" in lines[3]


def test_demo_command_writes_vector_generations_and_config(tiny_default_model, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--max-new-tokens", "4", "--prompt", "hello there",
                     "--no-hypersteer"]) == 0
    printed = capsys.readouterr().out
    assert "PROMPT: hello there" in printed and "unsteered" in printed
    vector = hs.SteeringVector.load(out / "vector.safetensors", model=tiny_default_model)
    assert vector.hook_name == "blocks.1.hook_resid_post" and vector.method == "diffmean"
    generations = json.loads((out / "generations.json").read_text())
    assert generations[0]["prompt"] == "hello there" and len(generations[0]) == 4
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "demo" and config["settings"]["coefficient"] == 4.0


def test_demo_command_runs_the_hypersteer_demo_with_its_options(tiny_default_model, tmp_path, monkeypatch):
    calls = []
    bridge = object()  # stands in for the embedded model's TransformerBridge (the demo's generator)
    monkeypatch.setattr("hooksteer.models.load_bridge", lambda *args, **kwargs: bridge)
    monkeypatch.setattr("hooksteer.hypersteer.demo.run_hypersteer_demo",
                        lambda model, settings, **kwargs: calls.append((model, settings, kwargs)) or {"seconds": 0.0})
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--max-new-tokens", "3", "--prompt", "hi", "--one-sign",
                     "--hypersteer-steps", "5", "--hypersteer-held-out", "2", "--hypersteer-factor", "0.7"]) == 0
    assert len(calls) == 1
    model, settings, kwargs = calls[0]
    assert model is tiny_default_model and kwargs["generator"] is bridge
    assert settings.steps == 5 and settings.held_out == 2 and settings.factor == 0.7
    assert kwargs["out_dir"] == str(out) and settings.max_new_tokens == 3
    calls.clear()
    assert cli.main(["demo", "--out", str(out), "--max-new-tokens", "3", "--prompt", "hi", "--no-hypersteer"]) == 0
    assert calls == []


def test_train_psr_and_train_sae_commands_are_registered():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train-psr", "train-sae"} <= set(commands)
    with pytest.raises(SystemExit):
        parser.parse_args(["train-sae", "--no-such-option"])


def test_diffmean_then_generate_commands(tiny_default_model, tmp_path, capsys):
    positive, negative = tmp_path / "pos.txt", tmp_path / "neg.txt"
    positive.write_text("I love it\nwhat a joy\n")
    negative.write_text("I hate it\nwhat a pain\n")
    path = tmp_path / "v" / "vector.safetensors"
    cli.main(["diffmean", "--hook", "blocks.2.hook_resid_pre", "--positive", str(positive),
              "--negative", str(negative), "--out", str(path)])
    assert hs.SteeringVector.load(path).source["n_positive"] == 2
    assert cli.main(["generate", "--vector", str(path), "--coefficient", "3", "--prompt", "hi",
                     "--max-new-tokens", "3"]) == 0
    assert "steered x3" in capsys.readouterr().out


def test_diffmean_command_needs_texts(tiny_default_model, tmp_path, capsys):
    assert cli.main(["diffmean", "--hook", "blocks.1.hook_resid_post", "--out", str(tmp_path / "v.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("hooksteer diffmean: error: give --contrast-set")


def test_bridge_fast_path_matches_transformer_lens_loop_under_steering(tiny_bridge):
    """generate_texts on a bridge runs Hugging Face's loop; with steering it gives the tokens of bridge.generate."""
    v = hs.SteeringVector("blocks.1.hook_resid_post", torch.randn(32, generator=torch.Generator().manual_seed(1)))
    prompts = ["the cat sat on the mat", "hello"]
    for positions in ("all", "generated"):
        with hs.steer(tiny_bridge, v * 8.0, positions=positions):
            fast = generate_texts(tiny_bridge, prompts, max_new_tokens=6, chat=False)
            reference = []
            for prompt in prompts:
                tokens = tiny_bridge.to_tokens(prompt)
                out = tiny_bridge.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False)
                reference.append(tiny_bridge.tokenizer.decode(
                    [t for t in out[0, tokens.shape[1]:].tolist() if t != tiny_bridge.tokenizer.eos_token_id][:6],
                    skip_special_tokens=True).strip())
        assert fast == reference, positions


def test_patching_the_loader_does_not_stick_to_the_package_namespace(monkeypatch, tiny_llama):
    with monkeypatch.context() as patch:
        patch.setattr("hooksteer.models.load_model", lambda *a, **k: tiny_llama)
        assert hs.load_model() is tiny_llama
    import hooksteer.models

    assert hs.load_model is hooksteer.models.load_model


def test_bad_input_prints_a_clear_error_without_traceback(tiny_default_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HOOKSTEER_DEBUG", raising=False)
    code = cli.main(["diffmean", "--contrast-set", "love_hate", "--hook", "blocks.99.hook_resid_post",
                     "--out", str(tmp_path / "v.safetensors")])
    err = capsys.readouterr().err
    assert code == 2
    assert "hooksteer diffmean: error:" in err and "blocks.99.hook_resid_post" in err
    assert "Residual sites are blocks.{0..2}.hook_resid_{pre,mid,post}" in err, "the message lists valid names"
    assert "Traceback" not in err
    assert cli.main(["generate", "--vector", str(tmp_path / "missing.safetensors"), "--prompt", "hi"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_debug_variable_shows_the_traceback(tiny_default_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKSTEER_DEBUG", "1")
    with pytest.raises(KeyError, match="blocks.99"):
        cli.main(["diffmean", "--contrast-set", "love_hate", "--hook", "blocks.99.hook_resid_post",
                  "--out", str(tmp_path / "v.safetensors")])



def test_every_missing_package_error_is_a_user_error_with_its_install_command():
    from analysis.corpora import CorpusMissingError
    from hooksteer.data.base_prompts import BasePromptDataMissingError
    from hooksteer.data.concepts import ConceptDataMissingError
    from hooksteer.models import ModelNotInstalledError
    from hooksteer.packaged import PackageMissingError

    for error_class in (CorpusMissingError, BasePromptDataMissingError, ConceptDataMissingError, ModelNotInstalledError):
        assert issubclass(error_class, PackageMissingError), error_class
        assert cli._is_user_error(error_class("pip install --no-deps x")), error_class
    assert not cli._is_user_error(RuntimeError("a bug")), "other runtime errors keep their traceback"


def test_cli_position_choices_are_the_hooks_named_positions():
    """``--positions`` of demo / generate offers exactly the named positions the hooks accept, each of which steers."""
    from typing import get_args

    from hooksteer.hooks.types import PositionName

    assert cli.POSITION_CHOICES == get_args(PositionName)
    parser = cli.build_parser()
    for command in ("demo", "generate"):
        action = next(a for a in parser._subparsers._group_actions[0].choices[command]._actions
                      if a.dest == "positions")
        assert tuple(action.choices) == cli.POSITION_CHOICES
