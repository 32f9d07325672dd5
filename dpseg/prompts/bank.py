"""Prompt banks: text and visual prompts of a vocabulary, cached on disk.

A bank is a directory::

    BANK/manifest.json                 the key: encoder fingerprints, generator identity, templates, sizes
    BANK/classes/<slug>-<hash>.safetensors   one per class: text T (M, d), visual V (M, d),
                                       visual_stage{2,3,4} v_j (M, D_j), seeds; metadata: class name, source, ...
    BANK/images/<slug>-<hash>/NNN.png  the generated images, when kept

Every file is written atomically, so a build killed at any moment leaves only complete class files (plus, at
worst, a hidden ``.*.tmp`` file that is ignored and later removed); building again skips finished classes.
A bank is never silently used with other weights: :meth:`PromptBank.prompt_set` compares the fingerprints of the
model's visual-prompt encoder and text tower with the manifest and raises :class:`BankError` on a mismatch.
Class names are matched after whitespace normalisation of their synonyms ("bed " == "bed", "a,b" == "a, b",
"red  square" == "red square"); a class list naming one class twice, also in another case, is refused
(:func:`dpseg.vocab.class_key`). Every class file carries a content hash (:mod:`dpseg.weights`), checked when it is
loaded and by :meth:`PromptBank.verify` (``dpseg prompts info``, ``dpseg check``); a build rebuilds damaged files.

Every file of a bank is covered: the manifest carries ``manifest_sha256``, the SHA-256 of its other fields as
canonical JSON, checked whenever the bank is opened (a hand-edited seed or encoder fingerprint is "damaged", not
silently used; manifests written before the hash load with a note). The manifest is read by the bounded reader
(:mod:`dpseg.safe_load`) and its fields are type-checked. A class file's tensors must have the shapes the manifest
names (M templates x embed_dim / stage_dims) and finite values, checked at load and by ``dpseg check``. Kept images
under ``images/`` are never read back by dpseg (a record for people), so they need no hash.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from dpseg.errors import BankError, InputError, quote, short_list
from dpseg.model.dual_prompt import PromptSet
from dpseg.prompts.class_file import (
    STAGE_KEYS,
    class_metadata,
    class_stem,
    expected_shapes,
    tensor_problem,
    verify_class_files,
)
from dpseg.prompts.manifest import (
    MANIFEST,
    MANIFEST_HASH,
    check_manifest,
    manifest_status,
    read_manifest,
    write_manifest,
)
from dpseg.vocab import canonical_name, check_class_list
from dpseg.weights import (
    nonfinite_problem,
    safetensors_integrity,
    save_safetensors,
    state_fingerprint,
)

FORMAT, VERSION = "dpseg-prompt-bank", 1
log = logging.getLogger("dpseg")
_NOTED: set = set()  # banks already noted as unhashed (once per process)
_NOTED_MANIFEST: set = set()  # banks whose manifest was noted as unhashed
CLASS_DIR, IMAGE_DIR = "classes", "images"
ENCODER_FIELDS = {"prompt_encoder": "visual-prompt encoder", "text_tower": "text tower"}
SHAPE_FIELDS = ("templates_id", "prompt_image_size", "embed_dim", "stage_dims")
GENERATION_FIELDS = ("generator", "seed", "images_per_class")


class PromptBank:
    """A prompt-bank directory. Make one with :meth:`create`, read one with :meth:`open`."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = Path(root), manifest

    # ------------------------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls, root, key: dict, generator: str = "", generator_spec: str = "", seed: int = 0, images_per_class: int = 0
    ) -> PromptBank:
        """Open ``root`` if it holds a bank with this key (else BankError naming the difference) or start a new one."""
        root = Path(root).expanduser()
        gen = {
            "generator": generator,
            "generator_spec": generator_spec,
            "seed": int(seed),
            "images_per_class": int(images_per_class),
        }
        if (root / MANIFEST).exists():
            bank = cls.open(root)
            bank.check_key(key)
            if generator:
                if bank.manifest["generator"]:
                    bank.check_generation(generator, seed, images_per_class)
                else:  # a bank so far made of exemplars only adopts the first generator used with it
                    bank.manifest.update(gen)
                    write_manifest(root, bank.manifest)
            return bank
        if root.exists() and not root.is_dir():
            raise BankError(f"prompt bank path {root} is a file; pass a directory")
        if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise BankError(
                f"{root} is not empty and holds no {MANIFEST}; choose a new or empty directory for the bank"
            )
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": VERSION, **key, **gen, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_manifest(root, manifest)  # first: a kill leaves an empty dir or a bank
        (root / CLASS_DIR).mkdir(exist_ok=True)
        return cls(root, manifest)

    @classmethod
    def open(cls, root, wait: float = 0.0) -> PromptBank:
        """Read a bank's manifest; ``wait`` seconds for it to appear (other ranks wait for rank 0)."""
        root = Path(root).expanduser()
        path, deadline = root / MANIFEST, time.monotonic() + wait
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not path.exists():  # a FIFO or a device is refused by the reader below, naming what it is
            raise BankError(
                f"{root} is not a prompt bank (no {MANIFEST}); build one with 'dpseg prompts build --checkpoint CKPT "
                f"--vocab CLASS_LIST --generator GENERATOR --out {root}'"
            )
        manifest = read_manifest(path)
        if manifest.get("format") != FORMAT:
            raise BankError(f"{path} is not a dpseg prompt-bank manifest")
        if manifest.get("version") != VERSION:
            raise BankError(
                f"prompt bank {root} has format version {quote(manifest.get('version'))}; this dpseg reads "
                f"version {VERSION}"
            )
        status, detail = manifest_status(root)
        if status == "damaged":
            raise BankError(f"prompt bank {root}: {MANIFEST} is damaged: {detail}; rebuild the bank with another --out")
        if status == "unverified" and str(root) not in _NOTED_MANIFEST:
            _NOTED_MANIFEST.add(str(root))
            log.warning("note: prompt bank %s: %s has %s", root, MANIFEST, detail)
        check_manifest(path, manifest)
        return cls(root, {k: v for k, v in manifest.items() if k != MANIFEST_HASH})

    # ------------------------------------------------------------------------------------------- checks
    @property
    def templates(self) -> list[str]:
        return list(self.manifest["templates"])

    def check_key(self, key: dict) -> None:
        for field in list(ENCODER_FIELDS) + list(SHAPE_FIELDS):
            if key[field] != self.manifest.get(field):
                what = ENCODER_FIELDS.get(field, field)
                raise BankError(
                    f"prompt bank {self.root} was built for another {what} "
                    f"({field} {self.manifest.get(field)} in the bank, {key[field]} here); "
                    "use the model/settings it was built with or build a new bank with another --out"
                )

    def check_generation(self, generator: str, seed: int, images_per_class: int) -> None:
        if not self.manifest["generator"]:  # exemplars only so far: any generator may fill the rest
            return
        here = {"generator": generator, "seed": int(seed), "images_per_class": int(images_per_class)}
        for field in GENERATION_FIELDS:
            if here[field] != self.manifest.get(field):
                raise BankError(
                    f"prompt bank {self.root} was generated with {field} {self.manifest.get(field)!r}, "
                    f"not {here[field]!r}; "
                    "resume with the same generator settings or build a new bank with another --out"
                )

    def check_encoders(self, prompt_encoder=None, text_tower=None) -> None:
        """BankError if the given encoders' weights are not those the bank was built with."""
        for field, module in (("prompt_encoder", prompt_encoder), ("text_tower", text_tower)):
            if module is not None and state_fingerprint(module) != self.manifest[field]:
                raise BankError(
                    f"prompt bank {self.root} was built with another {ENCODER_FIELDS[field]} (fingerprint "
                    f"{self.manifest[field]}, this model's is {state_fingerprint(module)}); rebuild the bank for this "
                    "model (dpseg prompts build --checkpoint ... --out NEW_BANK) or load the model it was built for"
                )

    # ------------------------------------------------------------------------------------ class files
    def class_path(self, name: str) -> Path:
        return self.root / CLASS_DIR / f"{class_stem(canonical_name(name))}.safetensors"

    def image_dir(self, name: str) -> Path:
        return self.root / IMAGE_DIR / class_stem(canonical_name(name))

    def _belongs(self, meta: Optional[dict], name: str) -> bool:
        if not meta:
            return False
        return meta.get("class_name") == name and all(
            meta.get(f) == str(self.manifest[f]) for f in ("prompt_encoder", "text_tower", "templates_id")
        )

    def has(self, name: str) -> bool:
        name = canonical_name(name)
        return self._belongs(class_metadata(self.class_path(name)), name)

    def missing(self, class_names: Sequence[str]) -> list[str]:
        """The classes (canonical names, in order) without a complete, valid class file."""
        return [n for n in check_class_list(class_names) if not self.has(n)]

    def classes(self) -> list[dict]:
        """Metadata of every valid class file (class_name, source, ...), sorted by name."""
        out = []
        for path in sorted((self.root / CLASS_DIR).glob("[!.]*.safetensors")):
            meta = class_metadata(path)
            if meta and self._belongs(meta, meta.get("class_name", "")) and path == self.class_path(meta["class_name"]):
                out.append(meta)
        return sorted(out, key=lambda m: m["class_name"])

    def write_class(
        self,
        name: str,
        text: Tensor,
        visual: Tensor,
        stages: Sequence[Tensor],
        source: str,
        seeds: Sequence[int],
        extra: Optional[dict] = None,
    ) -> Path:
        """Atomically write one class's prompts (shapes checked against the manifest)."""
        name = canonical_name(name)
        if len(stages) != len(STAGE_KEYS):
            raise InputError(
                f"class {name!r} needs {len(STAGE_KEYS)} stage prompt tensors (v_2, v_3, v_4), got {len(stages)}"
            )
        tensors = {"text": text, "visual": visual, **dict(zip(STAGE_KEYS, stages))}
        for key, shape in expected_shapes(self.manifest).items():
            if tuple(tensors[key].shape) != shape:
                raise InputError(
                    f"prompt tensor '{key}' of class {name!r} has shape {tuple(tensors[key].shape)}, expected {shape}"
                )
        tensors = {k: t.detach().float().cpu() for k, t in tensors.items()}
        tensors["seeds"] = torch.tensor(list(seeds), dtype=torch.int64)  # (N_images,)
        meta = {
            "class_name": name,
            "source": source,
            "seed": self.manifest["seed"],
            "num_images": len(seeds),
            **{f: self.manifest[f] for f in ("prompt_encoder", "text_tower", "templates_id")},
            **(extra or {}),
        }
        return save_safetensors(tensors, self.class_path(name), metadata=meta)

    def damaged(self, name: str) -> Optional[str]:
        """Why the class file of ``name`` fails its content-hash check (None if intact, absent or unhashed)."""
        path = self.class_path(name)
        if not path.is_file():
            return None
        status, detail = safetensors_integrity(path)
        if status == "unverified" and str(self.root) not in _NOTED:
            _NOTED.add(str(self.root))
            log.warning(
                "note: prompt bank %s was written by an older dpseg: its class files have no content hash, so "
                "corruption in them cannot be detected",
                self.root,
            )
        return detail if status == "damaged" else None

    def build_command(self) -> str:
        """The command that adds or rebuilds classes of this bank (CKPT: the model it was built for, CLASS_LIST: the
        classes; the generator is the bank's own when it has one)."""
        gen = self.manifest.get("generator_spec") or "GENERATOR"
        return f"dpseg prompts build --checkpoint CKPT --vocab CLASS_LIST --generator {gen} --out {self.root}"

    def exemplars_command(self) -> str:
        return f"dpseg prompts add-exemplars --checkpoint CKPT --bank {self.root} --folder EXEMPLARS"

    def repair_hint(self) -> str:
        return (
            f"rebuild it with '{self.build_command()}' (it rebuilds damaged class files), or for an exemplar class "
            f"'{self.exemplars_command()}'"
        )

    def load_class(self, name: str) -> dict:
        """{text, visual, visual_stages, seeds, meta} of one class; BankError if absent, invalid or damaged."""
        from safetensors.torch import load_file

        name, path = canonical_name(name), self.class_path(name)
        meta = class_metadata(path)
        if not self._belongs(meta, name):
            raise BankError(
                f"prompt bank {self.root} has no valid entry for class {name!r} ({path.name}); "
                f"run '{self.build_command()}' again to (re)make it"
            )
        problem = self.damaged(name)
        if problem:
            raise BankError(
                f"prompt bank {self.root}: the file of class {name!r} ({CLASS_DIR}/{path.name}) is "
                f"damaged: {problem}; {self.repair_hint()}"
            )
        t = {k: v.clone() for k, v in load_file(str(path)).items()}  # detach from the file's memory map
        problem = tensor_problem(self.manifest, {k: tuple(v.shape) for k, v in t.items()}) or nonfinite_problem(t)
        if problem:
            raise BankError(
                f"prompt bank {self.root}: the file of class {name!r} ({CLASS_DIR}/{path.name}) {problem}; "
                f"{self.repair_hint()}"
            )
        return {
            "text": t["text"],
            "visual": t["visual"],
            "visual_stages": [t[k] for k in STAGE_KEYS],
            "seeds": t["seeds"],
            "meta": meta,
        }

    def clean_temp_files(self, older_than: float = 60.0) -> int:
        """Remove hidden temp files left by killed writers (only old ones: a live writer's file is young)."""
        now, removed = time.time(), 0
        for path in list(self.root.rglob(".*.tmp")):
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
        return removed

    # ------------------------------------------------------------------------------------- consumers
    def prompt_set(
        self,
        class_names: Sequence[str],
        model=None,
        *,
        prompt_encoder=None,
        text_tower=None,
        device: Union[str, torch.device, None] = None,
    ) -> PromptSet:
        """The prompts of ``class_names`` (in that order), after checking the bank against the model's encoders.

        ``model``: anything with ``prompt_encoder`` and ``text_encoder`` attributes (a DPSeg); or pass the encoders.
        A model without a visual-prompt encoder (text prompts only) is checked on its text tower alone.
        """
        if model is not None:
            prompt_encoder, text_tower = model.prompt_encoder, model.text_encoder
        if prompt_encoder is None and text_tower is None:
            raise InputError(
                "prompt_set needs model= (or prompt_encoder= / text_tower=) so the bank can be checked against it"
            )
        names = check_class_list(class_names)
        self.check_encoders(prompt_encoder, text_tower)
        wanted = {
            "num_templates": len(self.manifest["templates"]),
            "prompt_image_size": self.manifest["prompt_image_size"],
        }
        for attr, have in wanted.items():  # a DPSeg knows its M and its prompt size: a bank for others would not fit
            if getattr(model, attr, have) != have:
                raise BankError(
                    f"prompt bank {self.root} has {attr} {have} but the model uses {getattr(model, attr)}; "
                    "build a bank with the model's settings"
                )
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise BankError(
                f"prompt bank {self.root} lacks {len(missing)} of the {len(names)} classes ({short_list(missing)}); "
                f"add them with '{self.build_command()}' (classes already in the bank are skipped) or "
                f"'{self.exemplars_command()}'"
            )
        entries = [self.load_class(n) for n in names]
        if device is None:
            ref = prompt_encoder if prompt_encoder is not None else text_tower
            device = next(ref.parameters()).device
        stack = lambda key: torch.stack([e[key] for e in entries]).to(device)  # noqa: E731 - K x (M, dim) -> (K, M, dim)
        stages = [torch.stack([e["visual_stages"][j] for e in entries]).to(device) for j in range(3)]  # [(K, M, D_j)]
        return PromptSet(list(class_names), stack("text"), stack("visual"), stages)

    def verify(self) -> dict:
        """Every file of the bank: {"manifest": (status, detail), "ok": [class files], "unverified": [class files],
        "damaged": [(class file, why)]}: the manifest's hash; each class file's hash, tensor shapes (against the
        manifest) and finite values. Class files are named by their file name in ``classes/``."""
        return {"manifest": manifest_status(self.root), **verify_class_files(self.manifest, self.root / CLASS_DIR)}

    def info(self) -> dict:
        classes = self.classes()
        sources: dict[str, int] = {}
        for meta in classes:
            sources[meta.get("source", "?")] = sources.get(meta.get("source", "?"), 0) + 1
        files = [p for p in self.root.rglob("*") if p.is_file()]
        return {
            "path": str(self.root),
            **{k: v for k, v in self.manifest.items() if k != "templates"},
            "num_templates": len(self.manifest["templates"]),
            "num_classes": len(classes),
            "sources": sources,
            "kept_images": sum(
                1 for p in files if p.suffix == ".png" and IMAGE_DIR in p.relative_to(self.root).parts[:1]
            ),
            "temp_files": sum(1 for p in files if p.name.startswith(".") and p.name.endswith(".tmp")),
            "size_mb": round(sum(p.stat().st_size for p in files) / 2**20, 2),
            "integrity": self.verify(),
        }


def text_only_prompt_set(class_names: Sequence[str], text_tower, templates: Sequence[str]) -> PromptSet:
    """Text prompts only (no bank): T (K, M, d) from the text tower, for text-only models and baselines."""
    check_class_list(class_names)
    return PromptSet(list(class_names), text_tower.encode(list(class_names), list(templates)))
