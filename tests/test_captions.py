"""Token ids -> caption text -> embeddings: decoding, caching, the packaged encoder, the precomputed table."""
import numpy as np
import pytest
import torch
from open_clip import get_tokenizer

from xsample_openclip.targets.decode import TokenDecoder
from xsample_openclip.targets.embedders import OnlineCaptionEmbeddings, TableCaptionEmbeddings
from xsample_openclip.targets.keys import token_keys
from xsample_openclip.targets.encoders import SentenceEncoder
from xsample_openclip.precompute import build_table, check_table
from xsample_openclip.targets.sources import iter_captions
from xsample_openclip.targets.table import EmbeddingTable, MissingCaptionsError


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("xs-tiny-vit-32")  # SimpleTokenizer, context length 32


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder()


class CountingEncoder:
    """A deterministic stand-in encoder that records what it was asked to embed."""

    name, dim = "counting", 4

    def __init__(self):
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        vecs = torch.tensor([[len(t), t.count("a"), t.count("e"), 1.0] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(vecs, dim=-1)


def test_decode_strips_special_tokens_and_padding(tokenizer):
    tokens = tokenizer(["A Photo of a Dog, running on the BEACH!", "", "x"])
    assert TokenDecoder(tokenizer)(tokens) == ["a photo of a dog , running on the beach !", "", "x"]


def test_decode_keeps_exclamation_marks_before_symbols(tokenizer):
    """SimpleTokenizer's id 0 is "!" (e.g. before "$" in "!$"); only padding after end-of-text is dropped.
    Version 1 of the decoder dropped every id 0, so these captions lost their "!" and collided."""
    captions = ["hello !$ world", "hello $ world", "wow !!", "wow"]
    tokens = tokenizer(captions)
    row = tokens[0].tolist()
    assert 0 in row[1:row.index(tokenizer.eot_token_id)]  # a real id 0 before end-of-text
    decoded = TokenDecoder(tokenizer)(tokens)
    assert decoded == ["hello !$ world", "hello $ world", "wow !!", "wow"]
    assert len(set(token_keys(tokens).tolist())) == 4


def test_a_table_from_the_old_decoder_is_refused(tokenizer, tmp_path):
    import json

    from xsample_openclip.targets.table import fit_problems, table_meta, write_table

    table = write_table(tmp_path / "t", token_keys(tokenizer(["a"])), np.ones((1, 4), np.float16) / 2,
                        table_meta(tokenizer, "stub", "xs-tiny-vit-32"))
    assert fit_problems(table, "xs-tiny-vit-32", tokenizer) == []
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    del meta["decoder_version"]  # what tables built before the fix record
    (tmp_path / "t" / "meta.json").write_text(json.dumps(meta))
    problems = fit_problems(EmbeddingTable(tmp_path / "t"), "xs-tiny-vit-32", tokenizer)
    assert len(problems) == 1 and "caption decoder version 1, now 2" in problems[0]
    assert "dropped every '!' token" in problems[0] and "python -m xsample_openclip.precompute" in problems[0]


def test_decode_truncates_at_the_context_length(tokenizer):
    text = " ".join(["word"] * 100)
    decoded = TokenDecoder(tokenizer)(tokenizer([text]))[0]
    assert decoded == " ".join(["word"] * 30)  # 32 - start - end tokens


def test_token_keys_identify_captions(tokenizer):
    keys = token_keys(tokenizer(["a dog", "a cat", "a dog", "A  Dog"]))
    assert keys.dtype == np.uint64
    assert keys[0] == keys[2] == keys[3] and keys[0] != keys[1]


def test_online_embeddings_cache_and_deduplicate(tokenizer):
    encoder = CountingEncoder()
    emb = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), encoder, cache_size=2)
    tokens = tokenizer(["a dog", "a cat", "a dog"])
    first = emb(tokens)
    assert encoder.calls == [["a dog", "a cat"]]  # the duplicate is embedded once
    torch.testing.assert_close(first[0], first[2])
    again = emb(tokens)
    assert len(encoder.calls) == 1 and emb.hits == 3 and emb.misses == 3
    torch.testing.assert_close(again, first)
    emb(tokenizer(["a bee"]))  # evicts the least recently used ("a cat"... then "a dog")
    assert len(emb._cache) == 2


def test_packaged_minilm_is_the_real_model(minilm):
    dog, puppy, car = minilm.encode(["a photo of a dog", "a photo of a puppy", "a red car"])
    assert minilm.dim == 384
    assert float(dog @ puppy) == pytest.approx(0.8460, abs=1e-3)
    assert float(dog @ car) == pytest.approx(0.1969, abs=1e-3)
    assert float(dog.norm()) == pytest.approx(1.0, abs=1e-6)


def test_table_equals_online_embeddings(tmp_path, csv_data, tokenizer, minilm):
    table = build_table(tmp_path / "table", iter_captions(str(csv_data)), tokenizer, minilm,
                        "xs-tiny-vit-32", dtype="float32")
    assert len(table) == 64 and table.meta["encoder"] == "all-MiniLM-L6-v2"
    assert not (tmp_path / "table" / "progress.json").exists()
    tokens = tokenizer([c for c in iter_captions(str(csv_data))][:16])
    online = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), minilm)(tokens)
    torch.testing.assert_close(TableCaptionEmbeddings(table)(tokens), online, atol=1e-5, rtol=0)
    assert check_table(table, iter_captions(str(csv_data)), tokenizer)["missing_distinct"] == 0


def test_table_reports_missing_captions(tmp_path, tokenizer):
    table = build_table(tmp_path / "t", iter(["a dog", "a cat"]), tokenizer, CountingEncoder(), "xs-tiny-vit-32")
    with pytest.raises(MissingCaptionsError, match="1 of 2 captions in this batch are not in"):
        TableCaptionEmbeddings(table)(tokenizer(["a dog", "a horse"]))
    assert check_table(table, iter(["a dog", "a horse", "a horse"]), tokenizer) == {
        "captions": 3, "distinct": 2, "missing_distinct": 1}


def test_interrupted_precompute_resumes(tmp_path, tokenizer):
    captions = [f"caption number {i}" for i in range(10)]

    class Crashing(CountingEncoder):
        def encode(self, texts):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().encode(texts)

    with pytest.raises(KeyboardInterrupt):
        build_table(tmp_path / "t", iter(captions), tokenizer, Crashing(), "m", chunk=3)
    with pytest.raises(FileNotFoundError, match="missing meta.json"):
        EmbeddingTable(tmp_path / "t")
    resumed = CountingEncoder()
    table = build_table(tmp_path / "t", iter(captions), tokenizer, resumed, "m", chunk=3)
    assert sum(len(c) for c in resumed.calls) == 4  # 6 of 10 were done before the crash
    fresh = build_table(tmp_path / "u", iter(captions), tokenizer, CountingEncoder(), "m", chunk=3)
    np.testing.assert_array_equal(np.asarray(table.embeddings), np.asarray(fresh.embeddings))


def test_webdataset_captions_are_read_like_open_clip(wds_data):
    captions = list(iter_captions(wds_data))
    assert len(captions) == 64 and captions[0] == "a red circle at the top left"
