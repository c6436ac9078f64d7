"""``--xsample-locked-text-cache``: a locked Hugging Face text tower in eval mode, each caption pooled once.

Against independent computations: the cached tower's output and gradients equal OpenCLIP's own
``HFTextEncoder.forward`` with the transformer in eval mode (the stock forward, called unbound, so the
cache is bypassed); the transformer sees only captions it has not pooled before (counted by a forward
hook); a run through OpenCLIP's ``main`` logs the cache's counts, which equal the captions of the data,
and writes a checkpoint with the same keys as a run without it. Bad flag combinations are refused at
parsing, a text tower the cache cannot serve before the first step.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

from xsample_openclip import model_configs
from xsample_openclip.model_configs import minilm

MODEL = "xs-tiny-vit-32-minilm"
CAPTIONS = ["a red circle at the top left", "a man rowing boat", "a hot pepper", "grinning face with big eyes",
            "a blue square", "a blue square at the bottom right of a grey background"]


@pytest.fixture(scope="module")
def created():
    import open_clip

    model_configs.register()
    model = open_clip.create_model(MODEL)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    return model, open_clip.get_tokenizer(MODEL)


def stock_eval_forward(tower, ids):
    """OpenCLIP's own forward with the transformer in eval mode (unbound: the cache is not consulted)."""
    from open_clip.hf_model import HFTextEncoder

    was = tower.transformer.training
    tower.transformer.eval()
    try:
        return HFTextEncoder.forward(tower, ids)
    finally:
        tower.transformer.train(was)


def count_transformer_rows(tower):
    seen = []
    handle = tower.transformer.register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].shape[0]),
                                                     with_kwargs=True)
    return seen, handle


def test_cached_features_and_gradients_equal_the_stock_eval_mode_tower(created):
    from patches.locked_text import CachedLockedText

    model, tokenizer = created
    model.train()  # as train_one_epoch leaves it: dropout on in the stock forward
    tower = model.text
    cache = CachedLockedText(tower, capacity=100)
    ids = tokenizer(CAPTIONS + CAPTIONS[:2])  # repeated captions within a batch
    seen, handle = count_transformer_rows(tower)
    try:
        first = cache.forward(ids)
        second = cache.forward(ids[[3, 0, 6]])
    finally:
        handle.remove()
    assert seen == [len(CAPTIONS)]  # each distinct caption pooled once; the second call ran no transformer
    assert (cache.misses, cache.hits) == (6, 2 + 3)
    reference = stock_eval_forward(tower, ids)
    assert torch.allclose(first, reference, atol=1e-6, rtol=1e-5)
    assert torch.allclose(second, reference[[3, 0, 6]], atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # the stock forward in training mode is a dropout sample: the cache differs from it
        assert not torch.allclose(stock_forward(tower, ids), reference, atol=1e-4)

    tower.proj.weight.grad = None
    cache.forward(ids).square().sum().backward()
    cached_grad = tower.proj.weight.grad.clone()
    tower.proj.weight.grad = None
    stock_eval_forward(tower, ids).square().sum().backward()
    assert torch.allclose(cached_grad, tower.proj.weight.grad, atol=1e-5, rtol=1e-5)
    assert all(p.grad is None for p in tower.transformer.parameters())
    tower.proj.weight.grad = None


def stock_forward(tower, ids):
    from open_clip.hf_model import HFTextEncoder

    return HFTextEncoder.forward(tower, ids)


def test_the_least_recently_used_caption_is_dropped_beyond_the_capacity(created):
    from patches.locked_text import CachedLockedText

    model, tokenizer = created
    cache = CachedLockedText(model.text, capacity=2)
    seen, handle = count_transformer_rows(model.text)
    try:
        cache.pooled(tokenizer(CAPTIONS[:2]))
        cache.pooled(tokenizer(CAPTIONS[:1]))        # caption 0 becomes the most recent
        cache.pooled(tokenizer(CAPTIONS[2:3]))       # drops caption 1
        cache.pooled(tokenizer(CAPTIONS[:1]))        # still kept
        cache.pooled(tokenizer(CAPTIONS[1:2]))       # pooled again
        out = cache.pooled(tokenizer(CAPTIONS[:4]))  # more distinct captions than the capacity: still served
    finally:
        handle.remove()
    assert seen == [2, 1, 1, 2]
    assert out.shape == (4, 384) and len(cache._features) == 2


def test_install_replaces_the_forward_on_the_instance_only(created):
    import open_clip
    from patches.locked_text import install

    model, tokenizer = created
    other = open_clip.create_model(MODEL)
    keys = set(model.state_dict())
    cache = install(model, 10)
    assert model.text.forward == cache.forward and other.text.forward != cache.forward
    assert set(model.state_dict()) == keys
    ids = tokenizer(CAPTIONS)
    assert torch.allclose(model.encode_text(ids), stock_eval_forward(model.text, ids), atol=1e-6, rtol=1e-5)
    del model.text.forward  # back to the class's forward for the other tests


def test_a_tower_the_cache_cannot_serve_is_refused_naming_why():
    import open_clip
    from patches.locked_text import install

    model_configs.register()
    scratch = open_clip.create_model("xs-tiny-vit-32")
    with pytest.raises(SystemExit, match="not a Hugging Face text encoder"):
        install(scratch, 10)
    unlocked = open_clip.create_model(MODEL)
    unlocked.lock_text_tower(unlocked_layers=0, freeze_layer_norm=False)  # LayerNorms learn
    with pytest.raises(SystemExit, match=r"26 text-transformer tensors still learn .*--lock-text-freeze-layer-norm"):
        install(unlocked, 10)


def parse(*flags):
    from open_clip_train.params import parse_args

    import xsample_openclip.launch  # noqa: F401  (patched parser)

    return parse_args(["--train-data", "x.csv", "--model", MODEL, *flags])


@pytest.mark.parametrize("flags, message", [
    (("--xsample-locked-text-cache", "100"), "add --lock-text --lock-text-freeze-layer-norm"),
    (("--xsample-locked-text-cache", "100", "--lock-text"), "add --lock-text --lock-text-freeze-layer-norm"),
    (("--xsample-locked-text-cache", "100", "--lock-text", "--lock-text-freeze-layer-norm",
      "--lock-text-unlocked-layers", "2"), "drop\n? *--lock-text-unlocked-layers"),
    (("--xsample-locked-text-cache", "-1", "--lock-text", "--lock-text-freeze-layer-norm"), "a positive number"),
    (("--xsample-locked-text-cache", "100", "--lock-text", "--lock-text-freeze-layer-norm", "--torchcompile"),
     "not tested with --torchcompile"),
])
def test_bad_flag_combinations_are_refused_at_parsing(flags, message, capsys):
    patched()
    with pytest.raises(SystemExit):
        parse(*flags)
    assert re.search(message, capsys.readouterr().err)


def test_a_model_with_openclip_s_own_text_tower_is_refused_at_parsing(capsys):
    patched()
    from open_clip_train.params import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--train-data", "x.csv", "--model", "xs-tiny-vit-32", "--lock-text",
                    "--lock-text-freeze-layer-norm", "--xsample-locked-text-cache", "100"])
    assert "OpenCLIP's own text transformer" in capsys.readouterr().err


def test_parsed_flag_defaults_to_off():
    patched()
    from xsample_openclip import locked_text

    args = parse("--lock-text", "--lock-text-freeze-layer-norm")
    assert locked_text.capacity(args) == 0 and locked_text.flag_problems(args) == []


def patched():
    import patches

    patches.install()


def launcher_run(root, csv, name, *flags):
    cmd = [sys.executable, "-m", "xsample_openclip.launch", "--train-data", str(csv), "--dataset-type", "csv",
           "--model", MODEL, "--batch-size", "16", "--epochs", "2", "--save-frequency", "1", "--workers", "0",
           "--device", "cpu", "--precision", "fp32", "--lr", "1e-3", "--warmup", "1", "--seed", "0",
           "--log-every-n-steps", "1", f"--logs={root / 'logs'}", "--name", name,
           "--lock-text", "--lock-text-freeze-layer-norm", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "logs" / name


@pytest.mark.openclip_compat
@pytest.mark.skipif(minilm.tokenizer_problem() is not None, reason=str(minilm.tokenizer_problem()))
@pytest.mark.parametrize("loss", ["clip", "xsample"])
def test_a_run_pools_each_caption_once_and_writes_a_stock_checkpoint(tmp_path, loss):
    import csv as csv_module

    import tiny_data

    data = tiny_data.write_csv(tmp_path / "data", n=32)
    with open(data, newline="") as f:
        distinct = len({row["title"] for row in csv_module.DictReader(f, delimiter="\t")})
    run = launcher_run(tmp_path, data, f"cached-{loss}", "--loss", loss, "--xsample-locked-text-cache", "1000")
    log = (run / "out.log").read_text()
    lines = [line.split("Locked text cache: ", 1)[1] for line in log.splitlines() if "Locked text cache: " in line]
    assert lines[0].startswith(f"{32 - distinct} captions from the cache, {distinct} through the transformer")
    assert lines[1].startswith(f"32 captions from the cache, 0 through the transformer this epoch; {distinct} kept")
    assert "xsample_locked_text_cache: 1000" in (run / "params.txt").read_text()
    state = torch.load(run / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=True)["state_dict"]
    import open_clip

    model_configs.register()
    assert {k.removeprefix("module.") for k in state} == set(open_clip.create_model(MODEL).state_dict())
