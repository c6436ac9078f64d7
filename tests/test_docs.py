"""The user's documentation stays true: every relative link of README.md and docs/ resolves (files and
#anchors), every ``python -m MODULE`` they name answers ``--help``, the flag reference is the parser's,
the README's results table is its per-seed files', and the plugin example of docs/plugin-api.md trains.

docs/flags.md is generated from the parser: after changing a flag, rewrite it with
``python tests/test_docs.py --write-flags``."""
import argparse
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
FLAGS_PAGE = ROOT / "docs" / "flags.md"
BEGIN, END = "<!-- generated from the parser: begin -->", "<!-- generated from the parser: end -->"


def pages():
    return [ROOT / "README.md", ROOT / "CHANGELOG.md"] + sorted((ROOT / "docs").rglob("*.md"))


def without_code(text):
    """The text with fenced and indented code blocks and inline code removed (links there are examples)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for line in re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path):
    return re.findall(r"\]\(([^)\s]+)\)", without_code(path.read_text()))


def test_the_slugs_are_githubs():
    assert slug("7. The paper's claims, checked in small (`--family paper`)") == \
        "7-the-papers-claims-checked-in-small---family-paper"
    assert slug("Does it help?") == "does-it-help"


def test_every_relative_link_resolves():
    broken = []
    for page in pages():
        for target in links(page):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def named_modules():
    found = set()
    for page in pages():
        found.update(re.findall(r"(?:python|torchrun[^\n]*?) -m ((?:open_clip_train|xsample_openclip|eval)[\w.]*)",
                                page.read_text()))
    return sorted(found)


def named_flags():
    """{module: the --flags the docs' commands give it} (the console script counts as OpenCLIP's main; quoted
    values, such as the demo's --variant flags, and comments are left out)."""
    found = {}
    for page in pages():
        text = re.sub(r"\\\n\s*", " ", page.read_text())  # join continued command lines
        for match in re.finditer(r"(?:(?:python|torchrun[^\n`]*?) -m ((?:open_clip_train|xsample_openclip|eval)"
                                 r"[\w.]*)|xsample-openclip-train)([^\n`#]*)", text):
            module = match.group(1) or "open_clip_train.main"
            rest = re.sub(r"'[^']*'|\"[^\"]*\"", "", match.group(2))
            found.setdefault(module, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))
    return found


def test_every_module_the_docs_name_answers_help_with_the_flags_they_give_it():
    modules = named_modules()
    assert {"xsample_openclip.demo", "xsample_openclip.precompute", "open_clip_train.main"} <= set(modules)
    flags = named_flags()

    def run(module):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        out = done.stdout + done.stderr
        if done.returncode != 0 or "usage:" not in out.lower():
            return f"python -m {module} --help: exit {done.returncode}\n{out[-600:]}"
        unknown = sorted(f for f in flags.get(module, ()) if not re.search(re.escape(f) + r"(?![\w-])", out))
        return f"python -m {module}: the docs give it flags its --help does not list: {unknown}" if unknown else None

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [r for r in pool.map(run, modules) if r]
    assert not failed, "\n".join(failed)


# --- docs/flags.md: generated from the parser ---------------------------------------------------------------

def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def flags_reference():
    """The markdown tables of every flag the plugin adds to OpenCLIP's parser, one per flag group."""
    from xsample_openclip import registry

    parser = argparse.ArgumentParser(prog="open_clip_train.main")
    registry.add_loss_arguments(parser)
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.help != argparse.SUPPRESS
                   and a.dest != "help"]
        if not actions:
            continue
        out += ["", f"### {group.title if group.title != 'options' else 'The loss and resume'}", "",
                "| flag | default | what it does |", "|---|---|---|"]
        for a in actions:
            flag = a.option_strings[-1]
            if a.choices:
                flag += " " + "|".join(str(c) for c in a.choices)
            elif a.metavar:
                flag += f" {a.metavar}"
            elif a.nargs != 0:
                flag += " " + a.dest.upper().split("_")[-1]
            default = "off" if a.default is False else "—" if a.default is None else f"`{a.default}`"
            out.append(f"| `{_cell(flag)}` | {default} | {_cell(a.help)} |")
    return "\n".join(out[1:]) + "\n"


def generated_part(text):
    assert BEGIN in text and END in text, f"docs/flags.md lacks the markers {BEGIN} ... {END}"
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def test_the_flag_reference_is_the_parsers():
    assert generated_part(FLAGS_PAGE.read_text()) == flags_reference(), \
        "docs/flags.md is stale: run `python tests/test_docs.py --write-flags`"


# --- the README's results table comes from the committed per-seed files --------------------------------------

#: README row label -> (per-seed file, metric row of its table)
README_RESULTS = {
    "zero-shot top-1, 10 concepts": ("graph-test-emoji.csv", "zero-shot top-1, 10 concepts"),
    "zero-shot top-5": ("graph-test-emoji.csv", "zero-shot top-5"),
    "image-to-text retrieval R@5": ("graph-test-emoji.csv", "image-to-text retrieval R@5"),
    "BG-Gap (reliance on backgrounds, lower is better)":
        ("graph-test-emoji.csv", "BG-Gap = mixed_same - mixed_rand (lower is better)"),
    "colour and shape of unseen colour-shape pairs": ("graph-test-shapes.csv", "primary:"),
    "the same": ("graph-test-shapes-mixed.csv", "primary:"),
}


def _numbers(text):
    return [float(x) for x in re.findall(r"[-+−]?\d+\.\d+", text.replace("−", "-"))]


def test_the_readme_results_come_from_the_per_seed_files():
    section = ROOT.joinpath("README.md").read_text().split("## Does it help?", 1)[1].split("\n## ", 1)[0]
    section = section.split(LIT_HEADING, 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r and "Δ [95 % CI]" not in r]
    checked = 0
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        label = cells[1]
        if "verbatim" in cells[0]:
            file, metric = "graph-test-shapes-pair.csv", "primary:"
        elif label in README_RESULTS:
            file, metric = README_RESULTS[label]
        else:
            continue
        study = list(_study_row(file, metric).values())
        clip, xs, delta = _numbers(study[1]), _numbers(study[2]), _numbers(study[3])
        assert _numbers(cells[2]) == clip and _numbers(cells[3]) == xs, row
        if "verbatim" in cells[0]:
            assert delta == [0.0] * 4 and _numbers(cells[4]) == [0.0], row  # identical on every seed
        else:
            assert _numbers(cells[4]) == [delta[0], delta[2], delta[3]], row  # the mean and its interval
        checked += 1
    assert checked == 7, checked


#: The README's table of the pretrained-text-tower regime: row label -> (data set, metric row). Its columns:
#: captions | measure | CLIP from scratch | CLIP | X-Sample | Δ [95 % CI] (X-Sample − CLIP, this regime).
LIT_HEADING = "### With a pretrained text tower"
LIT_FILES = {"emoji": ("lit-test-emoji-lr5e-4.csv", "graph-test-emoji-x4.csv"),
             "shapes": ("lit-test-shapes-lr5e-4.csv", "graph-test-shapes-x4.csv")}
LIT_RESULTS = {
    "zero-shot top-1, 10 concepts": ("emoji", "zero-shot top-1, 10 concepts"),
    "zero-shot top-5": ("emoji", "zero-shot top-5"),
    "text-to-image retrieval R@5": ("emoji", "text-to-image retrieval R@5"),
    "image-to-text retrieval R@5": ("emoji", "image-to-text retrieval R@5"),
    "linear probe top-1, 10 concepts": ("emoji", "linear probe top-1, 10 concepts"),
    "BG-Gap (reliance on backgrounds, lower is better)": ("emoji", "BG-Gap = mixed_same - mixed_rand"),
    "colour and shape of unseen colour-shape pairs": ("shapes", "primary:"),
}


def _study_row(file, metric):
    """{column header: cell} of the metric's row in the regenerated table of one per-seed file."""
    from xsample_openclip.demo import tables

    table = tables.regenerate([ROOT / "docs" / "studies" / "results" / file]).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    line = next(l for l in table if l.startswith(f"| {metric}"))
    return dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))


def test_the_readme_pretrained_text_tower_results_come_from_the_per_seed_files():
    section = ROOT.joinpath("README.md").read_text().split(LIT_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r and "Δ [95 % CI]" not in r]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        data, metric = LIT_RESULTS[cells[1]]
        lit_file, scratch_file = LIT_FILES[data]
        lit, scratch = _study_row(lit_file, metric), _study_row(scratch_file, metric)
        assert _numbers(cells[2]) == _numbers(scratch["clip"]), row
        assert _numbers(cells[3]) == _numbers(lit["clip"]) and _numbers(cells[4]) == _numbers(lit["xsample"]), row
        delta = _numbers(lit["Δ xsample − clip, paired [95 % CI]"])
        assert _numbers(cells[5]) == [delta[0], delta[2], delta[3]], row
    assert len(rows) == len(LIT_RESULTS), [r.split("|")[2] for r in rows]


# --- docs/plugin-api.md: the minimal plugin is a working loss ------------------------------------------------

def test_the_plugin_example_works():
    import torch
    from open_clip.loss import ClipLoss

    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "plugin-api.md").read_text(), re.S).group(1)
    scope = {}
    exec(compile(code, "plugin-api.md", "exec"), scope)
    plugin = scope["ScaledClipPlugin"]()
    parser = argparse.ArgumentParser()
    for group in plugin.flag_groups:
        group.add_to(parser)
    args = parser.parse_args(["--scaled-clip-factor", "3"])
    assert plugin.validate(args) == [] and plugin.validate(parser.parse_args(["--scaled-clip-factor", "0"]))
    assert plugin.startup(args).notes and list(plugin.kept_on_resume(args)) == ["scaled_clip_factor"]
    torch.manual_seed(0)
    img, txt = torch.nn.functional.normalize(torch.randn(2, 8, 4), dim=-1)
    scale = torch.tensor(10.0)
    loss = plugin.build(args)(img, txt, scale, output_dict=True)["scaled_clip_loss"]
    assert loss.item() == pytest.approx(3 * ClipLoss()(img, txt, scale).item())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-flags"]:
        sys.exit("usage: python tests/test_docs.py --write-flags")
    text = FLAGS_PAGE.read_text()
    head, tail = text.split(BEGIN, 1)[0], text.split(END, 1)[1]
    FLAGS_PAGE.write_text(f"{head}{BEGIN}\n{flags_reference()}{END}{tail}")
    print(f"wrote {FLAGS_PAGE}")
