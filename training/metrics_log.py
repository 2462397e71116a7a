"""Training logs: metrics.csv (one row per logged step), eval.jsonl, optional TensorBoard.

On resume, rows after the resumed step are dropped, so the files describe one
consistent run rather than the union of a crashed one and its continuation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

TRAIN_FIELDS = ["step", "stage", "loss", "lr", "logit_scale", "samples_per_s", "memory_mb",
                "skipped_steps"]


def _truncate_csv(path: Path, after_step: int) -> None:
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= after_step]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, TRAIN_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _truncate_jsonl(path: Path, after_step: int) -> None:
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and json.loads(ln)["step"] <= after_step]
    path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")


class MetricsLog:
    """Append-only logs in ``folder``; does nothing on ranks other than 0."""

    def __init__(self, folder: Path, enabled: bool, resumed_step: int | None, tensorboard: bool):
        self.enabled = enabled
        self.train_csv = folder / "metrics.csv"
        self.eval_jsonl = folder / "eval.jsonl"
        self.tb = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if resumed_step is None:
            self.train_csv.unlink(missing_ok=True)
            self.eval_jsonl.unlink(missing_ok=True)
        else:
            _truncate_csv(self.train_csv, resumed_step)
            _truncate_jsonl(self.eval_jsonl, resumed_step)
        if not self.train_csv.exists():
            with self.train_csv.open("w", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, TRAIN_FIELDS).writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("train.tensorboard needs `pip install zhclip[train]`") from err
            self.tb = SummaryWriter(str(folder / "tensorboard"))

    def log_train(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.train_csv.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, TRAIN_FIELDS).writerow({k: row.get(k) for k in TRAIN_FIELDS})
        if self.tb is not None:
            for k in ("loss", "lr", "logit_scale", "samples_per_s", "memory_mb"):
                if row.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def log_eval(self, step: int, stage: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.eval_jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "stage": stage, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"val/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
