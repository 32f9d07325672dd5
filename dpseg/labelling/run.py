"""Label a whole image collection with one vocabulary: sharded over torchrun's ranks, batched, resumable, exact.

    seg = Segmenter.from_pretrained(CKPT).set_vocabulary(classes, bank=BANK)
    report = label_collection(seg, LabelOptions(inputs=["photos/"], out=Path("labels_out")))

The same call runs in one process or under ``torchrun --nproc-per-node N [--nnodes M]`` (the caller starts the
process group: :func:`dpseg.distributed.start`). Rank 0 expands the inputs once into the sorted manifest, checks the
output folder's key (:mod:`dpseg.labelling.job`) and deals the fixed batches still to do (:mod:`dpseg.labelling.
manifest`) to the ranks; each rank decodes its images in loader workers (:mod:`dpseg.labelling.loader`), predicts
through the one inference path (:class:`~dpseg.segmenter.Segmenter`, i.e. :class:`~dpseg.evaluation.inference.
Inference`) and writes every image's outputs atomically, its JSON last; rank 0 shows one progress line for the job
(:mod:`dpseg.labelling.progress`) and, when all ranks are done, merges the COCO file and the summary
(:mod:`dpseg.labelling.coco`). Several nodes need ``out`` on a filesystem they all share.

**Batches and exactness.** With the ``whole`` protocol images of any size are predicted together (each is squashed
to ``eval.input_size``). Batching changes float rounding only, but that can move a pixel at a near-tie, so batches are
fixed slices of the manifest and the batch size is part of the key: a resumed or re-sharded run writes the same bytes
as an uninterrupted one. Two settings make an image's map depend on the other images of its batch, so they run one
image at a time: SED's early rejection (``eval.early_rejection_topk``: a class stays if any image of the batch keeps
it) and ``eval.refine_scope=present`` (pass 2 re-decodes the classes detected in any image of the batch). ``slide``
and ``tile`` predict one image at a time anyway (batches are then only loaded together).

A bad image (unreadable, truncated, over the pixel limit) is reported on one line and in ``failures.jsonl`` and
skipped; images that fail are tried again by the next run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from dpseg import __version__, distributed
from dpseg.atomic import atomic_write_text
from dpseg.errors import DPSegError, InputError
from dpseg.image_io import DEFAULT_MAX_PIXELS, label_image, save_atomic, score_image
from dpseg.labelling.coco import ShardWriter, image_record, merge
from dpseg.labelling.job import FORMAT, Layout, normalised, open_job, remove_temporaries
from dpseg.labelling.loader import Loaded, batch_loader
from dpseg.labelling.manifest import Entry, batches, build_entries, expand, rank_batches, read_manifest, write_manifest
from dpseg.labelling.progress import JobProgress, RankProgress
from dpseg.segmenter import SegmentationResult, Segmenter
from dpseg.visualize import overlay
from dpseg.weights import state_fingerprint

KILL_HOOK = "DPSEG_LABEL_TEST_KILL"  # "RANK:N": that rank kills itself (SIGKILL) after the label map of its N-th image


@dataclass
class LabelOptions:
    inputs: list[str]  # files, folders (recursive), globs
    out: Path
    lists: list[str] = field(default_factory=list)  # files listing one image path a line
    batch_size: int = 8
    workers: int = 2  # decoding processes per rank (0 = in the model's process)
    refine: Optional[bool] = None  # None: the checkpoint's eval.two_pass where it can run
    tile: int = 0
    min_score: Optional[float] = None  # None: the checkpoint's eval.min_score
    overlays: bool = False
    save_scores: bool = False
    alpha: float = 0.5
    max_pixels: int = 0  # refuse images above this many pixels (0: Pillow's limit)
    overwrite: bool = False
    progress: bool = True


@dataclass
class LabelReport:
    images: int  # in the manifest
    labelled: int  # done now, this run and earlier ones
    new: int  # labelled by this run
    failed: int
    batch_size: int
    world: int
    seconds: float  # the labelling loop, slowest rank
    stats: dict  # decode_s, wait_s, model_s, write_s summed over ranks
    failures: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class RankFailed(DPSegError):
    """Another rank (rank 0) refused the job; it reports why, this rank only stops."""


def prompt_fingerprint(prompts) -> str:
    tensors = {"text": prompts.text}
    if prompts.visual is not None:
        tensors["visual"] = prompts.visual
    for j, v in enumerate(prompts.visual_stages or [], start=2):
        tensors[f"stage{j}"] = v
    return state_fingerprint(tensors)


def batching(seg: Segmenter, opts: LabelOptions) -> tuple[int, int, Optional[str]]:
    """(images loaded together, batch size of the key, why the model sees one image at a time or None)."""
    inference = seg.inference(opts.refine)
    s = inference.settings
    if s.early_rejection_topk:
        return 1, 1, "early rejection (eval.early_rejection_topk) keeps the classes any image of a batch keeps"
    if inference.two_pass and inference.refine.scope == "present":
        return 1, 1, "eval.refine_scope=present re-decodes the classes detected in any image of a batch"
    if s.protocol == "slide" or opts.tile:
        return max(1, opts.batch_size), 1, "--tile and the slide protocol predict one image at a time"
    return max(1, opts.batch_size), max(1, opts.batch_size), None


def job_key(seg: Segmenter, opts: LabelOptions, min_score: float, key_batch: int) -> dict:
    inference = seg.inference(opts.refine)
    assert seg.class_names is not None and seg.prompts is not None
    return {
        "format": FORMAT,
        "model": state_fingerprint(seg.model),
        "classes": list(seg.class_names),
        "prompts": prompt_fingerprint(seg.prompts),
        "inference": {**inference.describe(), "max_full_pixels": seg.max_full_pixels},
        "min_score": min_score,
        "tile": opts.tile,
        "batch_size": key_batch,
        "outputs": {
            "overlays": opts.overlays,
            "scores": opts.save_scores,
            **({"alpha": opts.alpha} if opts.overlays else {}),  # another opacity matters only where overlays are made
        },
        "inputs": {
            "paths": [os.path.abspath(os.path.expanduser(p)) for p in opts.inputs],
            "lists": [os.path.abspath(os.path.expanduser(p)) for p in opts.lists],
        },
    }


def _prepare(seg: Segmenter, opts: LabelOptions, layout: Layout, key: dict, load_batch: int, world: int) -> dict:
    """Rank 0: the folder checked, the manifest made or read, the batches still to do; what every rank needs."""
    resumed = open_job(layout, key, opts.overwrite)
    layout.root.mkdir(parents=True, exist_ok=True)
    if resumed and layout.manifest.is_file():
        entries = read_manifest(layout.manifest)
        root = json.loads(layout.job.read_text())["root"]
        removed = remove_temporaries(layout.root)
    else:
        root_path, pairs = expand(opts.inputs, opts.lists, layout.root)
        entries, root, removed = build_entries(pairs), str(root_path), 0
        write_manifest(layout.manifest, entries)
        info = {"root": root, "images": len(entries), "checkpoint": seg.checkpoint, "prompt_source": seg.prompt_source}
        atomic_write_text(layout.job, json.dumps({**normalised(key), **info, "dpseg": __version__}, indent=1) + "\n")
    done = sum(layout.marker(e.name).exists() for e in entries) if resumed else 0
    fixed = batches(len(entries), load_batch)
    todo = [j for j, b in enumerate(fixed) if not resumed or not _all_done(layout, entries, b)]
    token = uuid.uuid4().hex
    atomic_write_text(layout.run, json.dumps({"token": token, "world": world}))
    return {"token": token, "images": len(entries), "done": done, "todo": todo, "root": root, "removed": removed}


def _all_done(layout: Layout, entries: list[Entry], batch: list[int]) -> bool:
    return all(layout.marker(entries[i].name).exists() for i in batch)


def _check_shared(layout: Layout, token: str, rank: int) -> None:
    """A rank other than 0 must see rank 0's files: several nodes need ``--out`` on a shared filesystem."""
    for _ in range(40):  # a network filesystem may show a new file a few seconds late
        try:
            if json.loads(layout.run.read_text()).get("token") == token:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.25)
    raise InputError(
        f"rank {rank} does not see rank 0's files in {layout.root}: with several nodes, --out must be on a filesystem "
        "all of them share"
    )


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def _predict(seg: Segmenter, items: list[Loaded], opts: LabelOptions, min_score: float) -> list:
    """[(item, SegmentationResult or None, error or None)]; a batch that fails is retried one image at a time."""
    try:
        results = seg.segment(
            [it.image for it in items if it.image is not None],
            refine=opts.refine,
            tile=opts.tile,
            batch_size=len(items),
            min_score=min_score,
        )
        return [(it, r, None) for it, r in zip(items, results)]
    except (DPSegError, RuntimeError, MemoryError) as e:
        if not isinstance(e, DPSegError) and not _is_oom(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(items) > 1:
            return [out for it in items for out in _predict(seg, [it], opts, min_score)]
        why = "out of memory; try --tile 1024 or --batch-size 1" if _is_oom(e) else str(e)
        return [(items[0], None, why)]


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 6)


class _Writer:
    """One image's outputs, its JSON last (the mark that it is done)."""

    def __init__(self, layout: Layout, opts: LabelOptions, shard: ShardWriter, rank: int):
        self.layout, self.opts, self.shard = layout, opts, shard
        hook = os.environ.get(KILL_HOOK, "")
        self.kill_after = int(hook.split(":")[1]) if hook and int(hook.split(":")[0]) == rank else 0
        self.written = 0

    def __call__(self, entry: Entry, image: torch.Tensor, result: SegmentationResult) -> None:
        layout, K = self.layout, len(result.class_names)
        save_atomic(label_image(result.labels, K), layout.label_png(entry.name))
        self.written += 1
        if self.written == self.kill_after:  # the kill -9 drill of the tests: the worst moment, the map without JSON
            os.kill(os.getpid(), signal.SIGKILL)
        if self.opts.overlays:
            rgb = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
            picture = overlay(rgb, result.labels, result.class_names, result.pixels.tolist(), self.opts.alpha)
            save_atomic(picture, layout.overlay(entry.name), quality=90)
        if self.opts.save_scores:
            save_atomic(score_image(result.scores), layout.score_png(entry.name))
        present = [c for c in result.classes if c.pixels]  # vocabulary order
        self.shard.append(image_record(entry, result.labels, [(c.index, _round(c.mean_score)) for c in present]))
        info = {
            "image": entry.image,
            "file_name": entry.file_name,
            "size": list(result.size),
            "refined": result.refined,
            "unlabelled_pixels": result.unlabelled_pixels,
            "classes": [
                {
                    "index": c.index,
                    "name": c.name,
                    "pixels": c.pixels,
                    "area": _round(c.area),
                    "mean_score": _round(c.mean_score),
                }
                for c in present
            ],
        }
        atomic_write_text(layout.marker(entry.name), json.dumps(info, indent=1, allow_nan=False) + "\n")


def label_collection(seg: Segmenter, opts: LabelOptions) -> LabelReport:
    """Label every image of ``opts.inputs`` into ``opts.out`` (module doc). Rank 0 raises the job's user errors;
    the other ranks raise :class:`RankFailed`."""
    rank, world = distributed.rank_world()
    layout = Layout(opts.out)
    if seg.class_names is None:
        raise InputError("no vocabulary: call set_vocabulary(classes, ...) first")
    min_score = seg.min_score if opts.min_score is None else float(opts.min_score)
    load_batch, key_batch, one_by_one = batching(seg, opts)
    setup: dict = {}
    if rank == 0:
        try:
            setup = _prepare(seg, opts, layout, job_key(seg, opts, min_score, key_batch), load_batch, world)
        except Exception as e:  # the other ranks wait in the broadcast below: tell them, then report it here
            distributed.broadcast_object({"error": str(e) if isinstance(e, DPSegError) else repr(e)})
            raise
    setup = distributed.broadcast_object(setup)
    if "error" in setup:
        raise RankFailed(f"rank 0 refused the job: {setup['error']}")
    if rank:
        _check_shared(layout, setup["token"], rank)
    entries = read_manifest(layout.manifest)
    all_batches = batches(len(entries), load_batch)
    mine = rank_batches([all_batches[j] for j in setup["todo"]], rank, world)
    my_todo = sum(not layout.marker(entries[i].name).exists() for b in mine for i in b)
    total_todo = sum(distributed.gather_objects(my_todo))
    if rank == 0:
        say = f"label: {len(entries)} images under {setup['root']} into {layout.root}"
        say += f"; {setup['done']} done before" if setup["done"] else ""
        say += f"; {total_todo} to label over {world} process(es), batches of {load_batch}"
        print(say + (f" (the model sees one image at a time: {one_by_one})" if one_by_one else ""), file=sys.stderr)

    shard = ShardWriter(layout.shard(rank, world))
    mine_progress = RankProgress(layout, rank, setup["token"], my_todo)
    stats = mine_progress.stats
    job = JobProgress(layout, world, setup["token"], len(entries), total_todo, show=rank == 0 and opts.progress)
    write = _Writer(layout, opts, shard, rank)
    failures: list[dict] = []
    mine_progress.save(force=True)
    loader = batch_loader(entries, mine, opts.max_pixels or DEFAULT_MAX_PIXELS, opts.workers)
    start = asked = time.perf_counter()
    for items in loader:
        got = time.perf_counter()
        stats.wait_s += got - asked
        stats.decode_s += sum(it.seconds for it in items)
        pending = {it.index for it in items if not layout.marker(entries[it.index].name).exists()}
        good = [it for it in items if it.image is not None]
        outcomes = [(it, None, it.error) for it in items if it.image is None]
        outcomes += _predict(seg, good, opts, min_score) if good else []
        stats.model_s += time.perf_counter() - got
        t_write = time.perf_counter()
        for it, result, error in sorted(outcomes, key=lambda o: o[0].index):
            if it.index not in pending:
                continue  # done by an earlier run; predicted only to keep its batch the same
            entry = entries[it.index]
            if error is not None:
                failures.append({"index": it.index, "image": entry.image, "error": error})
                stats.failed += 1
                job.bar.write(f"error: {error if entry.image in error else f'{entry.image}: {error}'}", file=sys.stderr)
            else:
                assert it.image is not None and result is not None
                write(entry, it.image, result)
                stats.done += 1
        stats.write_s += time.perf_counter() - t_write
        mine_progress.save()
        if rank == 0:
            job.refresh(stats)
        asked = time.perf_counter()
    shard.close()
    stats.elapsed_s = time.perf_counter() - start
    mine_progress.finish()
    ranks = job.wait_for_all(stats)  # on files, not in a collective (dpseg.labelling.progress)
    failures = sorted((f for part in distributed.gather_objects(failures) for f in part), key=lambda f: f["index"])
    report = LabelReport(
        images=len(entries),
        labelled=0,
        new=sum(r["done"] for r in ranks),
        failed=0,
        batch_size=load_batch,
        world=world,
        seconds=max(r["elapsed_s"] for r in ranks),
        stats={k: round(sum(r[k] for r in ranks), 3) for k in ("decode_s", "wait_s", "model_s", "write_s")},
        failures=failures,
    )
    counts = None
    if rank == 0:
        counts = _finish(layout, entries, seg, setup["root"], failures, report)
    report.labelled, report.failed = distributed.broadcast_object(counts)
    return report


def _finish(layout: Layout, entries: list[Entry], seg: Segmenter, root: str, failures: list, report) -> tuple:
    """Rank 0, all ranks done: failures file, COCO merge, summary, run statistics."""
    assert seg.class_names is not None
    reason = {f["index"]: f["error"] for f in failures}
    missing = [e for e in entries if not layout.marker(e.name).exists()]
    lines = [
        json.dumps({"index": e.index, "image": e.image, "error": reason.get(e.index, "not labelled")}, allow_nan=False)
        for e in missing
    ]
    atomic_write_text(layout.failures, "".join(line + "\n" for line in lines))
    summary = merge(layout, entries, list(seg.class_names), root, failed=len(missing))
    report.labelled, report.failed = summary["images"], len(missing)
    rate = report.new / report.seconds if report.seconds > 0 else 0.0
    run = {**asdict(report), "images_per_s": round(rate, 3), "failures": len(missing)}
    atomic_write_text(layout.progress / "stats.json", json.dumps(run, indent=1, allow_nan=False) + "\n")
    return report.labelled, report.failed
