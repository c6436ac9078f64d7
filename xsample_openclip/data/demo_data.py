"""The demo data sets' common description: what the trainer and clip_benchmark need, per split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .params import DemoParams

MANIFEST = "manifest.json"


@dataclass
class DemoData:
    """Paths and counts the trainer and clip_benchmark need; ``train_args()``/``eval_args()`` spell them out.

    Held-out sets come in two splits, disjoint in their emoji (or, for the shapes data, in their
    unseen attribute pairs): ``val`` for every choice (settings, sweeps), ``test`` for the final report.
    """

    root: Path
    train_shards: str  # brace pattern for --train-data
    train_num_samples: int
    train_csv: Path | None
    eval_sets: dict[str, Path]  # clip_benchmark set name -> --dataset_root
    eval_tasks: dict[str, str]  # set name -> zeroshot_classification | zeroshot_retrieval
    classnames: list[str]
    splits: dict[str, list[str]]  # "val" / "test" -> the set names of that split
    bg_sets: dict[str, dict[str, str]]  # split -> background variant -> set name
    manifest_path: Path
    kind: str = "emoji"
    params: object = field(default_factory=DemoParams)

    def train_args(self, csv: bool = False) -> list[str]:
        """OpenCLIP trainer flags for this data (``csv=True``: the bit-reproducible CSV loader)."""
        if csv:
            return ["--train-data", str(self.train_csv), "--dataset-type", "csv",
                    "--csv-img-key", "filepath", "--csv-caption-key", "title"]
        return ["--train-data", self.train_shards, "--train-num-samples", str(self.train_num_samples),
                "--dataset-type", "webdataset"]

    def eval_args(self, name: str) -> list[str]:
        """clip_benchmark ``eval`` flags for one set (add model, output and batch flags)."""
        return ["--dataset", f"wds/{name}", "--dataset_root", str(self.eval_sets[name]),
                "--task", self.eval_tasks[name]]

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict, params_class=DemoParams) -> "DemoData":
        sets = manifest["eval_sets"]
        return cls(
            root=root,
            train_shards=str(root / manifest["train"]["shards"]),
            train_num_samples=manifest["train"]["num_samples"],
            train_csv=root / manifest["train"]["csv"] if manifest["train"]["csv"] else None,
            eval_sets={name: root / info["path"] for name, info in sets.items()},
            eval_tasks={name: info["task"] for name, info in sets.items()},
            classnames=list(manifest["classes"]),
            splits={split: list(names) for split, names in manifest["splits"].items()},
            bg_sets={split: dict(v) for split, v in manifest.get("bg_sets", {}).items()},
            manifest_path=root / MANIFEST,
            kind=manifest.get("kind", "emoji"),
            params=params_class(**manifest["params"]),
        )
