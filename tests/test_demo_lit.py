"""``--text-tower minilm``: the demo with the packaged all-MiniLM-L6-v2 as a locked text tower.

The end-to-end run is the README's main command shrunk as tests/test_demo.py shrinks it (one epoch of
the 32 px image tower), with the probe: every number of the scratch regime comes out, both runs trained
with the tower locked, and the checkpoints still hold the packaged MiniLM."""
import json

import pytest
import torch
from test_demo import demo

from xsample_openclip.demo import cli
from xsample_openclip.model_configs import minilm


def test_minilm_text_tower_defaults_to_the_64px_config_and_locks_every_run():
    args = cli.parse_args(["--out", "x", "--text-tower", "minilm"])
    # 5e-4: chosen on validation for this regime
    assert args.model == "xs-tiny-vit-64-minilm" and args.family == "softmax" and args.lr == 5e-4
    assert cli.TEXT_TOWERS["minilm"][1] == ("--lock-text", "--lock-text-freeze-layer-norm",
                                           "--xsample-locked-text-cache", "100000")
    assert cli.parse_args(["--out", "x", "--text-tower", "minilm", "--model", "xs-tiny-vit-32-minilm"]).model \
        == "xs-tiny-vit-32-minilm"
    assert cli.parse_args(["--out", "x"]).model is None  # the scratch regime keeps its family default
    assert cli.parse_args(["--out", "x"]).lr == cli.FAMILY_LR["softmax"] == 2.5e-4
    assert cli.parse_args(["--out", "x", "--text-tower", "minilm", "--lr", "1e-3"]).lr == 1e-3


@pytest.mark.parametrize("argv, message", [
    (["--text-tower", "minilm", "--family", "sigmoid"], "drop --family sigmoid"),
    (["--text-tower", "minilm", "--family", "paper"], "drop --family paper"),
    (["--text-tower", "minilm", "--model", "xs-tiny-vit-64"], "--model must be one of"),
    (["--model", "xs-tiny-vit-64-minilm"], "add --text-tower minilm"),
])
def test_mismatched_text_tower_settings_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--out", "x", *argv])
    assert message in capsys.readouterr().err


def test_demo_lit_regime_end_to_end(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "lit"
    proc = demo(out, "--text-tower", "minilm", "--probe", model="xs-tiny-vit-32-minilm")
    for row in ("| zero-shot top-1, 10 concepts |", "| text-to-image retrieval R@5 |",
                "| linear probe top-1, 10 concepts |", "| BG-Gap = mixed_same - mixed_rand (lower is better) |"):
        assert row in proc.stdout, row
    assert (out / "data" / "emoji-seed0-32px").is_dir()
    assert "text tower: the packaged all-MiniLM-L6-v2, every weight locked" in (out / "summary-test.md").read_text()
    packaged = load_file(str(minilm.model_path() / "model.safetensors"))
    for run, loss in (("clip-s0", "clip"), ("xsample-s0", "xsample")):
        params = (out / "logs" / run / "params.txt").read_text()
        assert f"loss: {loss}" in params and "model: xs-tiny-vit-32-minilm" in params
        assert "lock_text: True" in params and "lock_text_freeze_layer_norm: True" in params
        assert "xsample_locked_text_cache: 100000" in params
        assert "Locked text cache: " in (out / "logs" / run / "out.log").read_text()
        state = torch.load(out / "logs" / run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
        tower = {k.split("text.transformer.", 1)[1]: v for k, v in state["state_dict"].items() if "text.transformer." in k}
        assert all(torch.equal(tower[k], packaged[k]) for k in packaged if k in tower)
    summary = json.loads((out / "summary-test.json").read_text())
    top1 = next(r for r in summary["rows"] if r["label"] == "zero-shot top-1, 10 concepts")
    assert set(top1["values"]) == {"clip", "xsample"}


def test_a_minilm_config_this_openclip_cannot_tokenize_is_refused_before_any_data(monkeypatch, capsys):
    """The demo refuses with the same message as main's parsing (minilm.run_problems), before building data."""
    monkeypatch.setattr(minilm, "tokenizer_problem", lambda: "cannot tokenize: pip install 'transformers<5'")
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--out", "x", "--text-tower", "minilm"])
    assert exc.value.code == 2
    assert "--model xs-tiny-vit-64-minilm: cannot tokenize: pip install 'transformers<5'" in capsys.readouterr().err
