"""Where a stack run's peak RSS comes from: RSS (and, optionally, the Python heap) by full-reconcile phase.

Bench only, off unless ``BENCH_MEMPROFILE`` names an output file (JSON) for the stack job (bench/stack.py):

* ``BENCH_MEMPROFILE=/tmp/p.json`` — a thread samples ``VmRSS`` every 50 ms and labels each sample with the
  full-reconcile method running (the methods are wrapped from here; no product code knows about it). The output
  gives the highest RSS reached inside each label and the label that was running at the peak.
* ``BENCH_MEMPROFILE_TRACE=N`` in addition — tracemalloc with N frames; while a full reconcile runs, a snapshot is
  taken whenever the traced heap passes its previous high by 5 % + 4 MiB, and the top allocation sites (by line and
  by traceback) of the last one (the one closest to the heap peak) are written out. Tracemalloc slows the run and
  adds its own memory: use the RSS-only run for the phase figures and this one for the sites.

Labels also cover the engine's other poll paths and the bench's own reads (``compare``, ``churn``), which run in the
same process after the full phase; ``marks["full"]`` is the peak when the full phase ended (the figure the stack
table reports).
"""

from __future__ import annotations

import functools
import json
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench.worker import rss_bytes

MiB = 2**20


class MemProfile:
    """RSS samples labelled by the running full-reconcile method (see module)."""

    def __init__(self, out: str, frames: int = 0) -> None:
        self.out = out
        self.frames = frames
        self.labels: dict[str, int] = {}  # methods running now (shards run concurrently: counts, not a stack)
        self.by_label: dict[str, float] = {}
        self.peak = (0.0, "", 0.0)  # (rss MiB, label, seconds)
        self.heap_high = 0
        self.snapshot: tracemalloc.Snapshot | None = None
        self.snapshot_label = ""
        self.snapshot_heap = 0
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.timeline: list[tuple[float, str, float]] = []
        self.marks: dict[str, float] = {}

    def label(self) -> str:
        return "/".join(k for k, n in self.labels.items() if n) or "-"

    def _sample(self) -> None:
        rss = rss_bytes() / MiB
        lab = self.label()
        self.by_label[lab] = max(self.by_label.get(lab, 0.0), rss)
        t = time.perf_counter() - self._t0
        if rss > self.peak[0]:
            self.peak = (rss, lab, t)
        if not self.timeline or abs(self.timeline[-1][2] - rss) >= 2 or self.timeline[-1][1] != lab:
            self.timeline.append((round(t, 2), lab, round(rss, 1)))
        if self.frames and tracemalloc.is_tracing() and self.labels.get("_full"):  # the full reconcile's heap
            cur = tracemalloc.get_traced_memory()[0]
            if cur > self.heap_high * 1.05 + 4 * MiB:
                self.heap_high = cur
                self.snapshot = None  # one snapshot at a time (a snapshot of millions of blocks is big itself)
                self.snapshot = tracemalloc.take_snapshot()
                self.snapshot_label, self.snapshot_heap = lab, cur

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def wrap(self, owner: Any, name: str) -> None:
        """Label the time spent in the async callable ``owner.name`` (a class's method or a module's function)."""
        original: Callable[..., Any] = getattr(owner, name)
        prof = self

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            prof.labels[name] = prof.labels.get(name, 0) + 1
            try:
                return await original(*args, **kwargs)
            finally:
                prof._sample()
                prof.labels[name] -= 1

        setattr(owner, name, wrapper)

    def mark(self, name: str) -> None:
        """Record the peak so far under ``name`` (e.g. the end of the bench's full phase)."""
        self._sample()
        self.marks[name] = round(self.peak[0], 1)
        if tracemalloc.is_tracing():
            self.marks[f"{name}_heap_peak"] = round(tracemalloc.get_traced_memory()[1] / MiB, 1)
        self.write()

    def start(self) -> None:
        from shared_code.enrollment import full_reconcile as fr
        from shared_code.enrollment import store

        for name in ("run", "_resume", "_start", "_persist", "_read", "_finish_read", "_apply", "_deactivate",
                     "_commit", "_users_expand", "_direct_members", "_devices_with_owners", "_per_user"):
            self.wrap(fr.FullReconcile, name)
        for name in ("checkpoint_chunks", "put_checkpoint", "load_devices", "apply"):
            self.wrap(store.EnrollmentStore, name)
        # Beyond the full reconcile: the engine's other poll paths and the bench's own reads (same process).
        from bench import stack
        from shared_code.enrollment import engine

        for name in ("_incremental", "_devices_catchup", "_start_devices_round", "_full"):
            self.wrap(engine.PollEngine, name)
        for name in ("compare", "churn"):
            self.wrap(stack, name)
        if self.frames:
            tracemalloc.start(self.frames)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.write()

    def write(self) -> None:
        """Write the profile so far (at the end of the full phase, and again when the job ends)."""
        by_label = sorted(dict(self.by_label).items(), key=lambda kv: -kv[1])
        doc: dict[str, Any] = {
            "peak_rss_mib": round(self.peak[0], 1), "peak_label": self.peak[1], "peak_at_s": round(self.peak[2], 1),
            "marks": self.marks,
            "max_rss_by_label_mib": {k: round(v, 1) for k, v in by_label},
            "timeline": list(self.timeline),
        }
        if self.snapshot is not None:
            snap = self.snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            doc["heap_snapshot"] = {"label": self.snapshot_label, "heap_mib": round(self.snapshot_heap / MiB, 1),
                                    "heap_peak_mib": round(tracemalloc.get_traced_memory()[1] / MiB, 1)}
            doc["top_lines"] = [f"{s.size / MiB:7.1f} MiB {s.count:8d} blocks  {s.traceback[0]}"
                                for s in snap.statistics("lineno")[:25]]
            doc["top_tracebacks"] = [
                {"mib": round(s.size / MiB, 1), "blocks": s.count, "where": [str(f) for f in s.traceback]}
                for s in snap.statistics("traceback")[:12]
            ]
        with open(self.out, "w") as f:
            json.dump(doc, f, indent=1)
