"""Check the integrity of dpseg files: every content hash recomputed, nothing loaded into a model.

  dpseg check runs/dpseg/final            a checkpoint folder (config.json + model.safetensors)
  dpseg check runs/dpseg                  a training run: every checkpoints/step-N, final/ and best/
  dpseg check runs/dpseg/checkpoints/step-00004000    one training checkpoint
  dpseg check banks/ade150                a prompt bank: every class file
  dpseg check some.safetensors            one file

Prints one line per file: "ok" (its SHA-256 matches the one stored when it was written), "unverified" (written
by an older dpseg, without a hash: it loads, but corruption cannot be detected) or "DAMAGED" (with the reason and
the fix). Exit status: 0 = nothing damaged, 2 = something damaged or the path is not a dpseg file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpseg.errors import BankError, InputError, printable

# the checkpoint, engine and bank modules (torch) are imported where they are used: `dpseg check --help` is instant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="checkpoint folder, training run or checkpoint, prompt bank, or .safetensors file",
    )


def integrity_rows(path: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """(what PATH is, [(file, ok|unverified|damaged, detail)])."""
    from dpseg.checkpoint import CONFIG_NAME, WEIGHTS_NAME, check_model_dir
    from dpseg.engine.resume import checkpoint_integrity, is_checkpoint, list_checkpoints
    from dpseg.prompts.bank import MANIFEST
    from dpseg.weights import safetensors_check

    if path.is_file() and path.suffix == ".safetensors":
        return "file", [(str(path), *safetensors_check(path))]
    if not path.is_dir():
        raise InputError(
            f"{path} does not exist"
            if not path.exists()
            else f"{path} is not a dpseg file (give a checkpoint folder, run, bank or .safetensors file)"
        )
    if (path / MANIFEST).exists():
        return "prompt bank", bank_rows(path)
    if is_checkpoint(path):
        return "training checkpoint", checkpoint_integrity(path)
    if (path / CONFIG_NAME).is_file() or (path / WEIGHTS_NAME).is_file():
        return "checkpoint folder", check_model_dir(path)
    checkpoints = list_checkpoints(path)
    exports = [path / name for name in ("final", "best") if (path / name / WEIGHTS_NAME).is_file()]
    if checkpoints or exports:
        rows = [row for ckpt in checkpoints for row in checkpoint_integrity(ckpt)]
        rows += [row for export in exports for row in check_model_dir(export)]
        return "training run", rows
    raise InputError(
        f"{path} is not a dpseg checkpoint folder, training run or checkpoint, or prompt bank "
        "(no config.json + model.safetensors, checkpoints/step-N, or manifest.json in it)"
    )


def bank_rows(path: Path) -> list[tuple[str, str, str]]:
    """Every file of a prompt bank: the manifest (hash, fields) and each class file (hash, shapes, finite values).
    A manifest that cannot be used is one damaged row, and the class files are then checked by their hashes."""
    from dpseg.prompts.bank import CLASS_DIR, MANIFEST, PromptBank
    from dpseg.weights import safetensors_check

    fix = (
        f"rebuild it with 'dpseg prompts build --checkpoint CKPT --vocab CLASS_LIST --generator GENERATOR --out {path}'"
        " (damaged class files are rebuilt)"
    )
    try:
        report = PromptBank.open(path).verify()
    except BankError as e:
        rows = [(str(path / MANIFEST), "damaged", str(e))]
        for file in sorted((path / CLASS_DIR).glob("[!.]*.safetensors")):
            status, detail = safetensors_check(file)
            rows.append((str(file), status, f"{detail}; {fix}" if status == "damaged" else detail))
        return rows
    status, detail = report["manifest"]
    rows = [(str(path / MANIFEST), status, detail)]
    classes = path / CLASS_DIR
    rows += [(str(classes / f), "ok", "") for f in report["ok"]]
    rows += [
        (str(classes / f), "unverified", "no content hash (written by an older dpseg)") for f in report["unverified"]
    ]
    rows += [(str(classes / f), "damaged", f"{why}; {fix}") for f, why in report["damaged"]]
    return rows


def run(args: argparse.Namespace) -> int:
    damaged = 0
    for spec in args.paths:
        kind, rows = integrity_rows(Path(spec).expanduser())
        counts = {s: sum(1 for _, status, _ in rows if status == s) for s in ("ok", "unverified", "damaged")}
        for file, status, detail in rows:  # details quote file contents (a stored hash, a JSON error): escaped
            file, detail = printable(file, 500), printable(detail)
            if status == "damaged":
                print(f"DAMAGED     {file}: {detail}")
            elif status == "unverified":
                print(f"unverified  {file}: {detail}")
            else:
                print(f"ok          {file}")
        summary = (
            f"{spec} ({kind}): {len(rows)} file(s), {counts['ok']} ok, {counts['unverified']} unverified, "
            f"{counts['damaged']} damaged"
        )
        print(summary, file=sys.stderr if counts["damaged"] else sys.stdout)
        damaged += counts["damaged"]
    return 2 if damaged else 0
