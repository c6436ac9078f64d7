"""Validation reports the plugin loss's objective, skips it with one warning only when validation
captions are missing from a precomputed table, and lets every other error in the loss stop the run.

OpenCLIP's real (patched) ``evaluate`` runs in this process on a stand-in model (features straight from
the inputs) and a real X-Sample loss over a caption table; the reported value is checked against the
float64 reference of tests/cli_runs.py, batch by batch, sample-weighted as ``evaluate`` weighs its own.
"""
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cli_runs as cr
import tiny_data
from xsample_openclip import patches, registry
from xsample_openclip.losses.softmax import XSampleLoss
from xsample_openclip.targets.embedders import TableCaptionEmbeddings
from xsample_openclip.targets.keys import token_keys
from xsample_openclip.targets.table import EmbeddingTable, table_meta, write_table

MODEL = "xs-tiny-vit-32"
TAU = 0.2
BATCH = 4
CAPTIONS = [caption for caption, *_ in tiny_data.samples(8)]


class FeatureModel(torch.nn.Module):
    """Image features are the (normalised) image tensor; text features a fixed embedding of the tokens."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.text = torch.nn.Parameter(torch.randn(1000, 8, generator=generator))
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, image=None, text=None):
        out = {"logit_scale": self.logit_scale.exp()}
        if image is not None:
            out["image_features"] = F.normalize(image, dim=-1)
        if text is not None:
            out["text_features"] = F.normalize(self.text[text % 1000].mean(1), dim=-1)
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from open_clip import get_tokenizer

    patches.install()
    tokens = get_tokenizer(MODEL)(CAPTIONS)
    images = torch.randn(len(CAPTIONS), 8, generator=torch.Generator().manual_seed(1))
    captions_emb = F.normalize(torch.randn(len(CAPTIONS), 6, generator=torch.Generator().manual_seed(2)), dim=-1)
    return tmp_path_factory.mktemp("val"), get_tokenizer(MODEL), tokens, images, captions_emb


def run_evaluate(root, checkpoints, tokenizer, tokens, images, captions_emb, rows_in_table):
    """``evaluate`` (patched) over the 8 samples in batches of 4, with a table of ``rows_in_table``;
    its metrics, and the lines it wrote to ``checkpoints``/results.jsonl (None: no file)."""
    from open_clip_train import params, train
    from open_clip_train.data import DataInfo

    keys = token_keys(tokens)
    table_dir = root / f"table-{len(rows_in_table)}"
    if not table_dir.exists():
        write_table(table_dir, keys[rows_in_table], captions_emb[rows_in_table].numpy(),
                    table_meta(tokenizer, "test-encoder", MODEL))
    args = params.parse_args(["--train-data", "x.csv", "--val-data", "x.csv", "--model", MODEL, "--device", "cpu",
                              "--precision", "fp32", "--loss", "xsample", "--xsample-tau-s", str(TAU)])
    args.rank, args.distributed, args.epochs, args.val_frequency = 0, False, 1, 1
    args.save_logs, args.checkpoint_path, args.wandb = True, str(checkpoints), False
    registry.loss_run(args).loss = XSampleLoss(TableCaptionEmbeddings(EmbeddingTable(table_dir)), tau_s=TAU)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, tokens), batch_size=BATCH)
    loader.num_samples, loader.num_batches = len(CAPTIONS), len(loader)
    metrics = train.evaluate(FeatureModel(), {"val": DataInfo(loader)}, 1, args)
    results = checkpoints / "results.jsonl"
    return metrics, [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else None


def reference(images, tokens, captions_emb):
    """Sample-weighted mean over the batches of the float64 X-Sample loss (tests/cli_runs.py)."""
    model = FeatureModel().double()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(CAPTIONS), BATCH):
            part = slice(start, start + BATCH)
            out = model(images[part].double(), tokens[part])
            total += cr.xsample_loss(out["image_features"], out["text_features"], float(out["logit_scale"]),
                                     captions_emb[part].double(), TAU) * BATCH
    return total / len(CAPTIONS)


def test_the_objective_is_reported_when_every_caption_is_in_the_table(setup, caplog, tmp_path):
    root, tokenizer, tokens, images, captions_emb = setup
    metrics, results = run_evaluate(root, tmp_path, tokenizer, tokens, images, captions_emb, np.arange(8))
    assert metrics["xsample_val_loss"] == pytest.approx(reference(images, tokens, captions_emb), rel=1e-5)
    assert results[-1]["xsample_val_loss"] == metrics["xsample_val_loss"] and "clip_val_loss" in metrics
    assert "not computed on the validation data" not in caplog.text


@pytest.mark.parametrize("error", [RuntimeError("injected fault"), ValueError("injected fault"),
                                   KeyError("injected fault")], ids=lambda e: type(e).__name__)
def test_any_other_error_in_the_loss_stops_the_run(setup, caplog, monkeypatch, tmp_path, error):
    """Not a warning and a metric that quietly vanishes from results.jsonl: the error reaches main."""
    root, tokenizer, tokens, images, captions_emb = setup

    def broken(self, keys):
        raise error

    monkeypatch.setattr(EmbeddingTable, "lookup", broken)
    with pytest.raises(type(error), match="injected fault"):
        run_evaluate(root, tmp_path, tokenizer, tokens, images, captions_emb, np.arange(8))
    assert "not computed on the validation data" not in caplog.text
    assert not (tmp_path / "results.jsonl").exists()


def test_captions_missing_from_the_table_skip_the_metric_with_one_warning(setup, caplog, tmp_path):
    """The table holds the first batch only: no value over that subset, one warning naming the table."""
    root, tokenizer, tokens, images, captions_emb = setup
    caplog.set_level(logging.WARNING)
    metrics, results = run_evaluate(root, tmp_path, tokenizer, tokens, images, captions_emb, np.arange(BATCH))
    assert "xsample_val_loss" not in metrics and "xsample_val_loss" not in results[-1]
    assert "clip_val_loss" in metrics and results[-1]["clip_val_loss"] == metrics["clip_val_loss"]
    warnings = [r.getMessage() for r in caplog.records if "not computed on the validation data" in r.getMessage()]
    assert len(warnings) == 1
    assert f"(left out of this evaluation): 4 of {BATCH} captions in this batch are not in the caption-embedding " \
        f"table {root / 'table-4'}" in warnings[0]  # the table's own message, unquoted
