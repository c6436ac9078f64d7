"""Section ``startup``: what the installed start-up hook costs every Python process of the environment.

``xsample_openclip_hook.pth`` runs ``import xsample_openclip.startup`` in every interpreter (pip,
pytest, data-loader workers), so it must stay cheap: goal <= 5 ms. Measured three ways:
- wall time of ``python -c pass`` with the hook active, with ``XSAMPLE_OPENCLIP_DISABLE=1`` (the
  ``.pth`` line still imports the package and the hook module but installs no finder) and with
  ``python -S`` (no site-packages at all: the floor), run alternately in rotating order, many repeats;
- ``python -X importtime -c pass``: the cumulative import time of ``xsample_openclip.startup`` (the
  package, the module and installing the finder): the hook's own cost, free of process start-up noise;
  and which modules that import loads (allowed: the two hook modules and the standard library);
- the finder's price per later import of a module it does not watch (a set lookup).
Installed packages import from cached bytecode, so these runs cache it too, under a private
``PYTHONPYCACHEPREFIX`` (the source tree is not touched). Where the environment turns bytecode off
(``PYTHONDONTWRITEBYTECODE`` with no cache present, as in an editable checkout) every process compiles the
hook from source instead; ``-X importtime`` is taken that way as well.
"""
import os
import re
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Optional

from .common import load_average, markdown_table, say

GOAL_MS = 5.0
HOOK_MODULES = ("xsample_openclip", "xsample_openclip.startup")
DISABLE = "XSAMPLE_OPENCLIP_DISABLE"
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def run(args, device, results, work):
    say(f"## Start-up cost of the hook (`python -c pass`, {args.startup_repeats} alternating repeats, "
        f"{load_average()})\n")
    cached = Path(work) / "startup_pycache"
    for cmd, disabled in VARIANTS.values():  # fill the bytecode cache
        subprocess.run(cmd, env=_env(disabled, cached), check=True)
    wall = wall_times(args.startup_repeats, cached)
    imports = [hook_import(importtime_output(cached)) for _ in range(args.startup_repeats)]
    as_is = [hook_import(importtime_output(None)) for _ in range(args.startup_repeats)]
    record = dict(wall_s={k: _summary(v) for k, v in wall.items()},
                  hook_import_us=_summary([i["cumulative_us"] for i in imports]),
                  hook_import_us_as_is=_summary([i["cumulative_us"] for i in as_is]),
                  editable_finder_us=_summary([i["editable_finder_us"] for i in imports])
                  if imports[0]["editable_finder_us"] else None,
                  hook_modules=imports[0]["modules"], foreign_modules=foreign_modules(imports[0]["modules"]),
                  dont_write_bytecode=bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
                  finder_ns_per_import=finder_cost_ns(), modules_in_this_process=len(sys.modules))
    _report(record)
    results["startup"] = record


def _summary(values):
    return dict(median=statistics.median(values), min=min(values), values=values)


def _env(disabled: bool, pycache: Optional[Path]):
    """This process's environment, the hook on or off; with ``pycache``, bytecode cached there."""
    env = {k: v for k, v in os.environ.items() if k != DISABLE}
    if disabled:
        env[DISABLE] = "1"
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


VARIANTS = {
    "hook active": ([sys.executable, "-c", "pass"], False),
    f"{DISABLE}=1": ([sys.executable, "-c", "pass"], True),
    "python -S (no site)": ([sys.executable, "-S", "-c", "pass"], False),
}


def wall_times(repeats: int, pycache: Path):
    """Seconds per ``python -c pass`` of each variant; each round runs every variant once, in an order
    rotated by one each round."""
    names = list(VARIANTS)
    out = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            cmd, disabled = VARIANTS[name]
            env = _env(disabled, pycache)
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            out[name].append(time.perf_counter() - start)
    return out


def importtime_output(pycache: Optional[Path]) -> str:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=_env(False, pycache),
                          capture_output=True, text=True, check=True)
    return proc.stderr


def hook_import(importtime_text: str) -> dict:
    """The cumulative microseconds of ``xsample_openclip.startup``, every module imported under it, and
    the cumulative microseconds of setuptools' editable-install finder (None in a regular install).

    ``-X importtime`` prints a module after the modules its import loaded, those indented deeper.
    """
    entries = []
    for line in importtime_text.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            entries.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    editable = next((c for c, _, name in entries if name.startswith("__editable__")), None)
    for index, (cumulative, depth, name) in enumerate(entries):
        if name == "xsample_openclip.startup":
            modules = [name]
            for _, child_depth, child in reversed(entries[:index]):
                if child_depth <= depth:
                    break
                modules.append(child)
            return dict(cumulative_us=cumulative, modules=sorted(modules), editable_finder_us=editable)
    raise RuntimeError("xsample_openclip.startup is not in `python -X importtime -c pass`: the start-up hook "
                       "(xsample_openclip_hook.pth in site-packages) is not installed in this environment")


def foreign_modules(modules):
    """Modules the hook loaded that are neither its own nor the standard library's (should be none)."""
    return [m for m in modules if m not in HOOK_MODULES and m.split(".")[0] not in sys.stdlib_module_names]


def finder_cost_ns(calls: int = 200_000) -> float:
    """Nanoseconds the hook's finder adds to importing a module it does not watch."""
    from ..startup import PatchOnImport

    finder = PatchOnImport()
    return timeit.timeit(lambda: finder.find_spec("numpy.linalg"), number=calls) / calls * 1e9


def _report(record):
    wall = record["wall_s"]
    floor = wall["python -S (no site)"]["median"]
    rows = [[name, f"{w['median'] * 1e3:.1f}", f"{w['min'] * 1e3:.1f}", f"{(w['median'] - floor) * 1e3:+.1f}"]
            for name, w in wall.items()]
    say(markdown_table(["`python -c pass` (bytecode cached)", "median ms", "min ms", "median vs python -S, ms"],
                       rows))
    imp, as_is = record["hook_import_us"], record["hook_import_us_as_is"]
    hook_ms = imp["median"] / 1e3
    ok = "met" if hook_ms <= GOAL_MS else "MISSED"
    active, disabled = wall["hook active"], wall[f"{DISABLE}=1"]
    how = ("PYTHONDONTWRITEBYTECODE set: compiled from source at every start" if record["dont_write_bytecode"]
           else "its own bytecode cache")
    say(f"\n- `python -X importtime -c pass`: `xsample_openclip.startup` cumulative **{hook_ms:.2f} ms** median, "
        f"{imp['min'] / 1e3:.2f} ms min ({len(imp['values'])} runs, bytecode cached). Goal <= {GOAL_MS:.0f} ms: "
        f"**{ok}**. With this environment as is ({how}): {as_is['median'] / 1e3:.2f} ms median, "
        f"{as_is['min'] / 1e3:.2f} ms min.")
    say(f"- Hook active minus disabled, wall time: median {(active['median'] - disabled['median']) * 1e3:+.1f} ms, "
        f"min {(active['min'] - disabled['min']) * 1e3:+.1f} ms (installing the finder: both import the hook "
        "module; process start-up noise is of this order).")
    if record["editable_finder_us"]:
        e = record["editable_finder_us"]
        say(f"- Not the hook: setuptools' editable-install finder (`__editable__..._finder`, an editable install "
            f"only) costs {e['median'] / 1e3:.1f} ms median, {e['min'] / 1e3:.1f} ms min, at every start-up.")
    say(f"- Modules the hook loads: {', '.join(record['hook_modules'])}; neither the hook's nor the standard "
        f"library's: {', '.join(record['foreign_modules']) or 'none'}.")
    say(f"- The finder's cost per later import of an unwatched module: {record['finder_ns_per_import']:.0f} ns "
        f"(this benchmark process has {record['modules_in_this_process']:,} modules loaded: "
        f"{record['finder_ns_per_import'] * record['modules_in_this_process'] / 1e6:.2f} ms in all). "
        f"({load_average()})\n")
