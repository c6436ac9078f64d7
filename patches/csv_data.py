"""CSV training data with bytes that are not UTF-8 trains instead of crashing (plugin losses only).

OpenCLIP 3.3.0's ``CsvDataset`` (data.py L29-47) reads the file with ``pd.read_csv(path, sep=sep)``: a
single byte that is not UTF-8 anywhere in a multi-million-row file stops the run with a bare
``UnicodeDecodeError``. With a plugin loss (``--loss`` other than ``clip``) the file is read with
``encoding_errors="surrogateescape"`` instead:
- captions: the undecodable bytes become U+FFFD (``captions.clean_caption_text``, which
  ``xsample_openclip.precompute`` applies too, so table keys agree);
- image paths keep their exact bytes (surrogate escapes are turned back into the original bytes when
  the file is opened), so no image goes missing.
How many rows were affected, and how many captions are empty cells (which OpenCLIP turns into the
text "nan"), is logged once per file at start-up. ``--loss clip`` keeps OpenCLIP's behaviour.

The re-implemented ``__init__`` is OpenCLIP 3.3.0's, line for line apart from the reading; the version
gate (version.py) compares a hash of OpenCLIP's source with the one it was written from and refuses a
plugin loss if they differ, so a changed OpenCLIP is never silently overridden.
"""
import contextlib
import functools
import logging

from .version import changed_sources


def _tolerant_dataset_class(stock_class):
    import pandas as pd

    from xsample_openclip.targets.decode import clean_caption_text

    class TolerantCsvDataset(stock_class):
        def __init__(self, input_filename, transforms, img_key, caption_key, sep="\t", tokenizer=None):
            df = pd.read_csv(input_filename, sep=sep, encoding_errors="surrogateescape")
            self.images = df[img_key].tolist()
            raw = df[caption_key].tolist()
            self.captions = [clean_caption_text(c) for c in raw]
            self.transforms = transforms
            self.tokenize = tokenizer
            fixed = sum(a is not b for a, b in zip(raw, self.captions))
            raw_paths = sum(isinstance(p, str) and not _is_utf8(p) for p in self.images)
            empty = int(df[caption_key].isna().sum())
            if fixed or raw_paths:
                logging.warning(
                    f"{input_filename}: {fixed} caption(s) had bytes that are not UTF-8, replaced by U+FFFD; "
                    f"{raw_paths} image path(s) had such bytes, kept as raw bytes so the files still open")
            if empty:
                logging.warning(f"{input_filename}: {empty} empty caption cell(s); OpenCLIP reads each as "
                                "the text 'nan'")

    TolerantCsvDataset.__name__ = TolerantCsvDataset.__qualname__ = "CsvDataset"
    return TolerantCsvDataset


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@contextlib.contextmanager
def _swapped(module, name, value):
    stock = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, stock)


def wrap_get_csv_dataset(stock):
    @functools.wraps(stock)
    def get_csv_dataset(args, *rest, **kwargs):
        from xsample_openclip import registry

        if registry.loss_run(args) is None or args.loss == "clip" or changed_sources():
            return stock(args, *rest, **kwargs)
        from open_clip_train import data

        with _swapped(data, "CsvDataset", _tolerant_dataset_class(data.CsvDataset)):
            return stock(args, *rest, **kwargs)

    return get_csv_dataset
