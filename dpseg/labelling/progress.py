"""Progress of a labelling job over all its ranks, without making the ranks wait for each other.

Each rank keeps its counts and timings in ``OUT/progress/rank-R.json`` (rewritten atomically every few seconds and
when it finishes), tagged with the run's token, so files of an earlier run are never counted. Rank 0 sums them into
the one progress line of the job (:mod:`dpseg.progress`: images done / total, images/s, ETA), and every rank, once
its own share is done, waits on these files - not in a collective, whose timeout a long imbalance (a resumed job
whose remaining images all fell to one rank) would exceed - until all ranks have finished.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

from dpseg.atomic import atomic_write_text
from dpseg.errors import InputError
from dpseg.labelling.job import Layout
from dpseg.progress import progress

WRITE_EVERY = 2.0  # seconds between a rank's progress files
POLL_EVERY = 0.5  # seconds between reads of the other ranks' files


@dataclass
class RankStats:
    rank: int
    token: str
    pid: int
    todo: int  # images of this rank's batches still to label when the run started
    done: int = 0
    failed: int = 0
    finished: bool = False
    decode_s: float = 0.0  # reading + decoding, summed over the loader's worker processes
    wait_s: float = 0.0  # time the model loop waited for decoded images
    model_s: float = 0.0  # inference (protocol, model, argmax, thresholds)
    write_s: float = 0.0  # label maps, JSON, RLE, overlays
    elapsed_s: float = 0.0  # from the first batch requested to the last written


class RankProgress:
    """This rank's counts, written to its progress file (module doc)."""

    def __init__(self, layout: Layout, rank: int, token: str, todo: int):
        self.layout, self.path = layout, layout.progress_file(rank)
        self.stats = RankStats(rank, token, os.getpid(), todo)
        self._start = time.perf_counter()
        self._last = -float("inf")

    def save(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last >= WRITE_EVERY:
            self._last = now
            self.stats.elapsed_s = round(now - self._start, 3)
            atomic_write_text(self.path, json.dumps(asdict(self.stats), allow_nan=False))

    def finish(self) -> None:
        self.stats.finished = True
        self.save(force=True)


def read_ranks(layout: Layout, world: int, token: str) -> list[Optional[dict]]:
    """Every rank's latest stats of this run (None where it has written none yet)."""
    out: list[Optional[dict]] = []
    for r in range(world):
        try:
            stats = json.loads(layout.progress_file(r).read_text())
        except (OSError, ValueError):
            stats = None
        out.append(stats if isinstance(stats, dict) and stats.get("token") == token else None)
    return out


class JobProgress:
    """Rank 0's line for the whole job; other ranks only wait (``show=False``)."""

    def __init__(self, layout: Layout, world: int, token: str, total: int, todo: int, show: bool):
        self.layout, self.world, self.token = layout, world, token
        self.bar = progress(total, "label", unit="img", enabled=show, initial=total - todo)
        self._seen = 0
        self._last = -float("inf")

    def refresh(self, own: RankStats, force: bool = False) -> list[Optional[dict]]:
        now = time.perf_counter()
        if not force and now - self._last < POLL_EVERY:
            return []
        self._last = now
        ranks = read_ranks(self.layout, self.world, self.token)
        ranks[own.rank] = asdict(own)
        processed = sum(r["done"] + r["failed"] for r in ranks if r)
        if processed > self._seen:
            self.bar.update(processed - self._seen)
            self._seen = processed
        return ranks

    def wait_for_all(self, own: RankStats, timeout: Optional[float] = None) -> list[dict]:
        """Block until every rank's file says finished (updating the line meanwhile); their stats."""
        start = time.perf_counter()
        while True:
            ranks = self.refresh(own, force=True)
            if all(r and r["finished"] for r in ranks):
                self.bar.close()
                return [r for r in ranks if r]
            if timeout is not None and time.perf_counter() - start > timeout:
                missing = [i for i, r in enumerate(ranks) if not (r and r["finished"])]
                raise InputError(
                    f"ranks {missing} have not finished after {timeout:.0f} s and wrote no progress to "
                    f"{self.layout.progress}; is --out on a filesystem all nodes share?"
                )
            time.sleep(POLL_EVERY)

    def write(self, text: str) -> None:
        self.bar.write(text, file=None)
