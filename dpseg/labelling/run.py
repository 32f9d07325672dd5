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
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from dpseg import __version__, distributed
from dpseg.atomic import atomic_write_text
from dpseg.errors import DPSegError, InputError
from dpseg.image_io import DEFAULT_MAX_PIXELS
from dpseg.labelling.coco import ShardWriter, merge
from dpseg.labelling.job import FORMAT, Layout, normalised, open_job, remove_temporaries
from dpseg.labelling.loader import batch_loader
from dpseg.labelling.manifest import batches, build_entries, expand, rank_batches, read_manifest, write_manifest
from dpseg.labelling.progress import JobProgress, RankProgress
from dpseg.labelling.writer import ImageWriter, predict_batch
from dpseg.prompts.resolve import prompt_fingerprint
from dpseg.segmenter import Segmenter
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
    done = [resumed and layout.marker(e.name).exists() for e in entries]
    todo = [j for j, b in enumerate(batches(len(entries), load_batch)) if not all(done[i] for i in b)]
    token = uuid.uuid4().hex
    atomic_write_text(layout.run, json.dumps({"token": token, "world": world}))
    return {"token": token, "images": len(entries), "done": sum(done), "todo": todo, "root": root, "removed": removed}


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
    share = {i: entries[i] for b in mine for i in b}  # only this rank's part is kept while labelling
    del entries
    todo = sum(not layout.marker(e.name).exists() for e in share.values())
    total_todo = sum(distributed.gather_objects(todo))
    if rank == 0:
        say = f"label: {setup['images']} images under {setup['root']} into {layout.root}"
        say += f"; {setup['done']} done before" if setup["done"] else ""
        say += f" ({setup['removed']} temporary file(s) of an interrupted run removed)" if setup["removed"] else ""
        say += f"; {total_todo} to label over {world} process(es), batches of {load_batch}"
        print(say + (f" (the model sees one image at a time: {one_by_one})" if one_by_one else ""), file=sys.stderr)
    job = JobProgress(layout, world, setup["token"], setup["images"], total_todo, show=rank == 0 and opts.progress)
    mine_progress = RankProgress(layout, rank, setup["token"], todo)
    failures = _label_share(seg, opts, layout, share, mine, min_score, mine_progress, job)
    ranks = job.wait_for_all(mine_progress.stats)  # on files, not in a collective (dpseg.labelling.progress)
    failures = sorted((f for part in distributed.gather_objects(failures) for f in part), key=lambda f: f["index"])
    # every image without its JSON was tried by this run, so its failures are the job's (the same on every rank)
    report = LabelReport(
        images=setup["images"],
        labelled=setup["images"] - len(failures),
        new=sum(r["done"] for r in ranks),
        failed=len(failures),
        batch_size=load_batch,
        world=world,
        seconds=max(r["elapsed_s"] for r in ranks),
        stats={k: round(sum(r[k] for r in ranks), 3) for k in ("decode_s", "wait_s", "model_s", "write_s")},
        failures=failures,
    )
    if rank == 0:
        _finish(layout, seg, setup["root"], report)
    return report


def _label_share(seg, opts, layout, share: dict, mine: list, min_score: float, mine_progress, job) -> list[dict]:
    """This rank's batches: decoded ahead by the loader workers, predicted here, written by a writer thread while
    the next batch is predicted (PNG compression releases the GIL). Its failures."""
    rank, stats = mine_progress.stats.rank, mine_progress.stats
    shard = ShardWriter(layout.shard(rank, distributed.rank_world()[1]))
    write = ImageWriter(layout, shard, rank, opts.overlays, opts.save_scores, opts.alpha)
    failures: list[dict] = []

    def write_batch(outcomes: list, pending: set) -> None:
        t_write = time.perf_counter()
        for it, result, error in sorted(outcomes, key=lambda o: o[0].index):
            if it.index not in pending:
                continue  # done by an earlier run; predicted only to keep its batch the same
            entry = share[it.index]
            if error is not None:
                failures.append({"index": it.index, "image": entry.image, "error": error})
                stats.failed += 1
                job.bar.write(f"error: {error if entry.image in error else f'{entry.image}: {error}'}", file=sys.stderr)
            else:
                assert it.image is not None and result is not None
                write(entry, it.image, result)
                stats.done += 1
        stats.write_s += time.perf_counter() - t_write

    mine_progress.save(force=True)
    paths = {i: e.image for i, e in share.items()}
    loader = batch_loader(paths, mine, opts.max_pixels or DEFAULT_MAX_PIXELS, opts.workers)
    writer, writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpseg-label-write"), None
    start = asked = time.perf_counter()
    try:
        for items in loader:
            got = time.perf_counter()
            stats.wait_s += got - asked
            stats.decode_s += sum(it.seconds for it in items)
            pending = {it.index for it in items if not layout.marker(share[it.index].name).exists()}
            good = [it for it in items if it.image is not None]
            outcomes = [(it, None, it.error) for it in items if it.image is None]
            outcomes += predict_batch(seg, good, opts.refine, opts.tile, min_score) if good else []
            stats.model_s += time.perf_counter() - got
            if writing is not None:
                writing.result()  # the previous batch is written (its errors raised here); at most one in flight
            writing = writer.submit(write_batch, outcomes, pending)
            mine_progress.save()
            if rank == 0:
                job.refresh(stats)
            asked = time.perf_counter()
        if writing is not None:
            writing.result()
    finally:
        writer.shutdown(wait=True)  # an interrupted run still finishes the image it is writing
        shard.close()
    stats.elapsed_s = time.perf_counter() - start
    mine_progress.finish()
    return failures


def _finish(layout: Layout, seg: Segmenter, root: str, report: LabelReport) -> None:
    """Rank 0, all ranks done: failures file, COCO merge, summary, run statistics."""
    assert seg.class_names is not None
    entries = read_manifest(layout.manifest)
    lines = [json.dumps(f, allow_nan=False) + "\n" for f in report.failures]
    atomic_write_text(layout.failures, "".join(lines))
    summary = merge(layout, entries, list(seg.class_names), root, failed=report.failed)
    if summary["images"] != report.labelled:  # an image neither labelled nor failed: outputs removed meanwhile?
        raise InputError(
            f"{report.images - summary['images'] - report.failed} image(s) of {layout.manifest} have no outputs "
            "although this run did not fail them; run the same command again"
        )
    rate = report.new / report.seconds if report.seconds > 0 else 0.0
    run = {**asdict(report), "images_per_s": round(rate, 3), "failures": report.failed}
    atomic_write_text(layout.progress / "stats.json", json.dumps(run, indent=1, allow_nan=False) + "\n")
