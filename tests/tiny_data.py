"""Small generated image-caption sets (CSV and webdataset) with distinct, related captions.

Each sample is a coloured shape at a position, captioned e.g. "a red circle at the top left", so
captions are all different yet share words: the X-Sample targets are neither one-hot nor uniform.
Images come from the package's shape renderer and files from its one layout writer.
"""
import itertools
from pathlib import Path

from xsample_openclip.data import shapes, writers


def samples(n=None):
    """(caption, colour, shape, place) for every combination (128), in a fixed order."""
    combos = itertools.product(shapes.COLOURS, shapes.SHAPES, shapes.PLACES)
    return [(f"a {c} {s} at the {p}", c, s, p) for c, s, p in combos][:n]


def render(colour, shape, place, size=32):
    """A large shape on white."""
    return shapes.render(colour, shape, place, "large", "white", px=size)


def _rows(n, size):
    return [(f"{i:05d}", writers.jpeg_bytes(render(c, s, p, size), quality=95), caption)
            for i, (caption, c, s, p) in enumerate(samples(n))]


def write_csv(root, n=64, size=32):
    """A tab-separated CSV (filepath, title) plus its images; returns the CSV path."""
    root = Path(root)
    return writers.write_csv(root / "train.csv", _rows(n, size), root / "images")


def write_shards(root, n=64, size=32, shards=2):
    """webdataset tar shards (NNNNNN.jpg + NNNNNN.txt); returns the brace pattern for --train-data."""
    rows = _rows(n, size)
    return writers.brace_pattern(writers.write_webdataset(Path(root), rows, shard_size=-(-len(rows) // shards)))


def startup_refusal(tmp_path, capsys, n, *flags) -> str:
    """Runs the X-Sample start-up checks (OpenCLIP's ``init_distributed_device``, patched) on ``n`` images
    that all share one caption, at batch 8, with ``flags``; asserts that start-up refuses with exit code 2
    before the log folder exists, and returns what it wrote to stderr."""
    import pytest
    from open_clip_train import distributed, params

    csv = writers.write_csv(tmp_path / "same.csv", [(f"{i:03d}", None, "a photo of a dog") for i in range(n)],
                            tmp_path / "images")
    args = params.parse_args(["--train-data", str(csv), "--dataset-type", "csv", "--model", "xs-tiny-vit-32",
                              "--batch-size", "8", "--device", "cpu", "--loss", "xsample", *flags,
                              f"--logs={tmp_path / 'logs'}", "--name", "same"])
    with pytest.raises(SystemExit) as exc:
        distributed.init_distributed_device(args)
    assert exc.value.code == 2
    assert not (tmp_path / "logs").exists()
    return capsys.readouterr().err
