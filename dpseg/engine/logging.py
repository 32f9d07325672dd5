"""What a training run tells its user: a progress bar, logs on disk, and the start-up table.

Files in the run directory (written by rank 0 only):

* ``log.jsonl`` — one JSON record per logged step (``"kind": "train"``) and per evaluation (``"kind": "eval"``);
* ``log.csv`` — the training records as a table (step, loss, lr, grad_norm, it/s, elapsed);
* ``tensorboard/`` — the same scalars for TensorBoard (``train.tensorboard``).

When a run resumes at step ``s``, records after ``s`` (from the interrupted attempt) are dropped from the JSONL
and CSV files and TensorBoard purges them, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from dpseg.atomic import json_text
from dpseg.build import component_counts
from dpseg.config import atomic_write_text
from dpseg.errors import DPSegError
from dpseg.progress import progress as progress_bar
from dpseg.safe_load import MAX_JSON_BYTES, loads_json, read_text

CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "it_per_s", "elapsed_s")


def _truncate_jsonl(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in read_text(path, "training log", MAX_JSON_BYTES * 16).split("\n"):
        try:
            step = loads_json(line, "a log line", dict).get("step", 0)
            if isinstance(step, (int, float)) and step <= last_step:
                kept.append(line)
        except DPSegError:
            continue  # a line cut by a crash
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _truncate_csv(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
        if row.get("step", "").isdigit() and int(row["step"]) <= last_step and None not in row:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    atomic_write_text(path, out.getvalue())


def _finite(x: float) -> Optional[float]:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


class TrainLogger:
    """Rank 0 logs; on other ranks every method is a no-op."""

    def __init__(
        self,
        output_dir,
        enabled: bool,
        start_step: int,
        total_steps: int,
        tensorboard: bool = True,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.start_step, self.total = start_step, total_steps
        self.tb = None
        self.bar = progress_bar(total_steps, "train", unit="it", initial=start_step, enabled=False)
        self._t0 = time.perf_counter()
        if not enabled:
            return
        self.dir = Path(output_dir)
        self.jsonl, self.csv = self.dir / "log.jsonl", self.dir / "log.csv"
        _truncate_jsonl(self.jsonl, start_step)
        _truncate_csv(self.csv, start_step)
        if not self.csv.is_file():
            atomic_write_text(self.csv, ",".join(CSV_FIELDS) + "\n")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        # a bar on a terminal; elsewhere (CI, a log file) the plain line per log record below says the same
        self.bar = progress_bar(total_steps, "train", unit="it", initial=start_step, enabled=progress, lines=False)

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def _append(self, path: Path, line: str) -> None:
        with open(path, "a") as f:
            f.write(line)
            f.flush()

    def train(
        self, step: int, loss: float, lr: float, grad_norm: float, it_per_s: float, extra: Optional[dict] = None
    ) -> None:
        """One training record: the loss averaged since the previous record, the lr, the last gradient norm."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._t0
        record = {
            "kind": "train",
            "step": step,
            "loss": _finite(loss),
            "lr": lr,
            "grad_norm": _finite(grad_norm),
            "it_per_s": round(it_per_s, 4),
            "elapsed_s": round(elapsed, 2),
            **(extra or {}),
        }
        self._append(self.jsonl, json_text(record, indent=None) + "\n")
        self._append(self.csv, ",".join("" if record[k] is None else f"{record[k]}" for k in CSV_FIELDS) + "\n")
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm", "it_per_s"):
                if record[key] is not None:
                    self.tb.add_scalar(f"train/{key}", record[key], step)
        if self.bar.is_bar:
            self.bar.set_postfix(f"loss={loss:.4f}, lr={lr:.2e}")
        else:  # no bar (not a terminal, or --no-progress): one plain line per record
            eta = (self.total - step) / it_per_s if it_per_s > 0 else float("nan")
            eta_text = (
                time.strftime("%H:%M:%S", time.gmtime(eta))
                if math.isfinite(eta) and eta < 86400
                else f"{eta / 3600:.1f} h"
            )
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  grad norm {grad_norm:.3g}  "
                f"{it_per_s:.2f} it/s  ETA {eta_text}",
                flush=True,
            )

    def eval(self, step: int, dataset: str, results: dict, best: Optional[dict] = None) -> None:
        if not self.enabled:
            return
        summary = {k: results["pass1"][k] for k in ("mIoU", "fwIoU", "mAcc", "pAcc")}
        record = {
            "kind": "eval",
            "step": step,
            "dataset": dataset,
            **summary,
            "num_images": results["num_images"],
            "seconds": results["seconds"],
            "per_class_IoU": results["pass1"]["per_class_IoU"],
            "best": best,
        }
        self._append(self.jsonl, json_text(record, indent=None) + "\n")
        if self.tb is not None:
            for key, value in summary.items():
                if value is not None:
                    self.tb.add_scalar(f"eval/{key}", value, step)
        self.message(
            f"eval @ step {step} on {dataset}: "
            + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in summary.items())
        )

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.tb = None


def format_table(title: str, rows: Sequence[tuple[str, ...]], header: Optional[tuple[str, ...]] = None) -> str:
    """A plain aligned text table; with a header the value columns are right-aligned (numbers), else left."""
    all_rows = ([header] if header else []) + list(rows)
    widths = [max(len(str(r[i])) for r in all_rows) for i in range(len(all_rows[0]))]
    fmt = lambda r: "  ".join(
        str(c).rjust(w) if i and header else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))
    ).rstrip()  # noqa: E731
    lines = [title, "-" * max(len(title), sum(widths) + 2 * (len(widths) - 1))]
    if header:
        lines.append(fmt(header))
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def setup_table(model, facts: list[tuple[str, str]]) -> str:
    """Start-up report: run facts, then trainable / frozen parameters per model component."""
    counts = [(name, human_count(tr), human_count(total - tr)) for name, total, tr in component_counts(model)]
    return "\n\n".join(
        [
            format_table("training run", facts),
            format_table("parameters", counts, header=("component", "trainable", "frozen")),
        ]
    )


def human_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K" if n >= 1000 else str(n)
