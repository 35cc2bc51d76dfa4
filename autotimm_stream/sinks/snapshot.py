"""Saves a JPEG of a frame when a chosen class appears in it: evidence for alerts and later review.

A class is *present* in a result when

- detection: a detection of that class scores at least ``min_score``;
- classification, multi-label: the class is among ``result.classes`` (the top-K, or those above
  the model's threshold) with a score of at least ``min_score``;
- segmentation: the class covers at least ``min_fraction`` of the frame's pixels.

A snapshot is written when a class is present and no snapshot of that class was written for that
source in the last ``cooldown_s``. So the first frame a class appears in is saved (its rising
edge), a class that stays in view is saved again once per ``cooldown_s``, and a detection that
flickers around its threshold writes at most one file per cooldown (a pure rising-edge rule would
write one per flicker). Time is the source's PTS, so a file gives the same snapshots whether it is
played in real time or ten times faster; frames without a PTS fall back to their capture time.

Files are named ``{source}_{frame_index:08d}_{class}.jpg`` and appear atomically (written under a
hidden temporary name, then renamed), so a watcher of the folder never reads half a JPEG. A source
removed and added again under the same id counts its frames from 0 again: its later sessions are
named ``{source}_2_...``, ``{source}_3_...`` (as the annotated video's files are), and a name this
sink has already written (two ids that sanitise alike) gets ``_2``, ``_3``... before ``.jpg``, so
no snapshot of a run replaces another.
``max_files`` bounds the disk a long run can use: past it, snapshots are counted as skipped.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..config import SnapshotConfig
from ..errors import ConfigError, SinkError
from ..fileio import unused_path, write_bytes_atomic
from ..messages import EndOfStream, Result
from ..tasks import Task
from .annotate import draw_result
from .base import Sink

__all__ = ["SnapshotSink", "check_classes", "present_classes", "safe_name"]

_logger = logging.getLogger(__name__)

_FIELD = "sinks.snapshot"
_UNSAFE = re.compile(r"[^\w.-]+")  # \w keeps letters of any script: a class named 猫 stays readable
_MAX_NAME = 64
_SHOWN_CLASSES = 20
_EPS_S = 1e-6


def safe_name(name: str, fallback: str = "x") -> str:
    """``name`` made safe for a file name: runs of other characters become ``_``, no leading dot or dash."""
    out = _UNSAFE.sub("_", name).strip("._-")[:_MAX_NAME].rstrip("._-")
    return out or fallback


def check_classes(classes: Sequence[str], model_classes: Sequence[str], field: str = f"{_FIELD}.classes") -> None:
    """Raise :class:`ConfigError` unless every name in ``classes`` is one of the model's classes."""
    known = list(model_classes)
    unknown = [c for c in classes if c not in set(known)]
    if not unknown:
        return
    hints = []
    lowered = {k.lower(): k for k in known}
    for c in unknown:
        match = lowered.get(c.lower()) or next(iter(difflib.get_close_matches(c, known, n=1)), None)
        if match is not None:
            hints.append(f"{c!r} -> {match!r}")
    shown = ", ".join(repr(k) for k in known[:_SHOWN_CLASSES]) + (" ..." if len(known) > _SHOWN_CLASSES else "")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise ConfigError(
        f"{field}: {', '.join(repr(c) for c in unknown)} not among the model's {len(known)} classes{hint}; "
        f"expected names from [{shown}]; fix the spelling or remove them (`autotimm-stream info MODEL` lists them)"
    )


def present_classes(result: Result, wanted: set[str], min_score: float, min_fraction: float) -> list[str]:
    """The classes of ``wanted`` present in ``result`` (see the module docstring), in result order."""
    found: dict[str, None] = {}  # ordered set
    if result.task is Task.DETECTION:
        for d in result.detections:
            if d.label in wanted and d.score >= min_score:
                found[d.label] = None
    elif result.task is Task.SEGMENTATION:
        for c in result.class_fractions:
            if c.label in wanted and c.fraction >= min_fraction:
                found[c.label] = None
    else:
        for p in result.classes:
            if p.label in wanted and p.score >= min_score:
                found[p.label] = None
    return list(found)


class SnapshotSink(Sink):
    """JPEG snapshots of the frames in which chosen classes appear, at most one per source and class per cooldown.

    Args:
        folder: where the JPEGs go (created by :meth:`open`).
        settings: the config's ``sinks.snapshot``: ``classes`` (the labels that trigger a snapshot;
            none: the sink writes nothing), ``min_score`` (detection, classification and
            multi-label score a class needs to count as present), ``min_fraction`` (share of the
            frame's pixels, segmentation), ``cooldown_s`` (per source and class, the least source
            time between two snapshots), ``annotated`` (draw the result as in the annotated video),
            ``max_files`` (later snapshots are skipped and counted), ``quality`` (JPEG, 1-100).
            Its ``folder`` is not read here.
    """

    name = "snapshot"

    def __init__(self, folder: str | os.PathLike[str], settings: SnapshotConfig):
        self.folder = os.fspath(folder)
        self.settings = settings
        self.classes = list(dict.fromkeys(settings.classes))
        self._wanted = set(self.classes)
        # each class's part of the file name, unique even where two names sanitise alike ("a b", "a/b")
        self._file_names: dict[str, str] = {}
        for k, c in enumerate(self.classes):
            base = safe_name(c, fallback=f"class{k}")
            self._file_names[c] = base if base not in self._file_names.values() else f"{base}_{k}"
        self._last: dict[tuple[str, str], float] = {}  # (source, class) -> time of its last snapshot
        self.written = 0
        self.skipped = 0  # snapshots due once max_files was reached
        self.failed = 0  # snapshots that could not be encoded or written (disk full, folder removed)
        self.per_class: Counter[str] = Counter()
        self.paths: list[str] = []  # files written, in order (at most max_files)
        self._names: set[str] = set()  # file names written (at most max_files): never overwritten
        self._sessions: dict[str, int] = {}  # source -> how many times it has started (1 for most)
        self._ended: set[str] = set()  # sources whose end of stream came: a later result starts anew

    def open(self) -> None:
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise SinkError(
                f"{_FIELD}.folder: cannot create {self.folder!r} ({exc.strerror}); pick a writable folder"
            ) from None
        if not os.access(self.folder, os.W_OK):
            raise SinkError(f"{_FIELD}.folder: cannot write into {self.folder!r}; pick a writable folder")
        if not self.classes:
            _logger.warning("%s.classes is empty: no snapshot will be written", _FIELD)

    def write(self, results: list[Result]) -> None:
        if not self._wanted:
            return
        for r in results:
            sid = r.source_id
            if sid not in self._sessions or sid in self._ended:
                self._ended.discard(sid)
                self._sessions[sid] = self._sessions.get(sid, 0) + 1
            due = self._due(r)
            if due:
                self._save(r, due)

    def _due(self, r: Result) -> list[str]:
        """The classes present in ``r`` whose cooldown for its source has run out; marks them taken."""
        f = r.frame
        t = f.pts if f.pts is not None else f.capture_ns / 1e9
        due = []
        for c in present_classes(r, self._wanted, self.settings.min_score, self.settings.min_fraction):
            last = self._last.get((f.source_id, c))
            # time going backwards (a looping file, a source whose clock restarted) starts afresh
            # 1 us of slack: 1.2 - 0.8 is 0.3999... in floats, and a cooldown of exactly N frame
            # intervals must not wait a frame longer
            if last is None or t - last >= self.settings.cooldown_s - _EPS_S or t < last:
                self._last[(f.source_id, c)] = t
                due.append(c)
        return due

    def _save(self, r: Result, due: list[str]) -> None:
        room = self.settings.max_files - self.written
        if room < len(due):
            if self.skipped == 0:
                _logger.warning(
                    "%s: max_files (%d) reached in %s; further snapshots are skipped (raise %s.max_files)",
                    _FIELD,
                    self.settings.max_files,
                    self.folder,
                    _FIELD,
                )
            self.skipped += len(due) - max(room, 0)
            due = due[: max(room, 0)]
            if not due:
                return
        image = draw_result(r) if self.settings.annotated else r.frame.image
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)  # OpenCV encodes BGR
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.settings.quality])
        if not ok:
            self._failed(f"frame {r.index} of {r.source_id} could not be encoded as JPEG", len(due))
            return
        source = safe_name(r.source_id, fallback="source")
        session = self._sessions.get(r.source_id, 1)
        if session > 1:  # the source was added again: its frame indices restarted at 0
            source = f"{source}_{session}"
        stem = f"{source}_{r.index:08d}"
        for c in due:
            name = unused_path(f"{stem}_{self._file_names[c]}.jpg", self._names)
            path = os.path.join(self.folder, name)
            try:
                write_bytes_atomic(path, jpeg.tobytes())
            except OSError as exc:
                self._failed(f"cannot write {path!r} ({exc.strerror})", 1)
                continue
            self._names.add(name)
            self.written += 1
            self.per_class[c] += 1
            self.paths.append(path)

    def _failed(self, why: str, n: int) -> None:
        # a snapshot is a side product: a full disk must not stop inference, but it must be seen
        log = _logger.error if self.failed == 0 else _logger.debug
        log("%s: %s; counted as failed", _FIELD, why)
        self.failed += n

    def end_of_stream(self, eos: EndOfStream) -> None:
        # a source added again under the same id starts with its own clock and its own file names
        for key in [k for k in self._last if k[0] == eos.source_id]:
            del self._last[key]
        if eos.source_id in self._sessions:
            self._ended.add(eos.source_id)

    def stats(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "written": self.written,
            "skipped": self.skipped,
            "failed": self.failed,
            "classes": {c: self.per_class[c] for c in self.classes},
        }

    def summary_lines(self) -> list[str]:
        return [f"snapshots: {self.written} in {self.folder} ({self.skipped} skipped)"]
