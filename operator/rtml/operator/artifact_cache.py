"""The signature check's download folder stays small: at most `max_files` kept artifacts and
`max_bytes` bytes, the least recently used deleted first, and no `.part` file left behind by a
download that was cut off (a crash, a restart) older than the download deadline.

The folder is the operator pod's `/tmp` emptyDir (256 MiB in the chart, past which the kubelet
evicts the pod), so an unbounded folder was a slow way to lose the operator. A kept file is only
a shortcut: the parsed inputs live in memory, so deleting one costs at most a download after the
next restart. "Used" is the file's mtime, which the check touches on every use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rtml.operator.signature")
KEPT_SUFFIX = ".onnx"
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class CachedFile:
    name: str
    size: int
    used: float  # seconds since the epoch (mtime)


def evictions(files: Sequence[CachedFile], max_files: int, max_bytes: int) -> list[str]:
    """The kept artifacts to delete, least recently used first, so that at most `max_files`
    files and `max_bytes` bytes remain; the most recently used one always stays (it was just
    downloaded or read)."""
    newest_first = sorted(files, key=lambda f: (f.used, f.name), reverse=True)
    keep, total = 0, 0
    out = []
    for i, f in enumerate(newest_first):
        if i == 0 or (keep < max_files and total + f.size <= max_bytes):
            keep, total = keep + 1, total + f.size
        else:
            out.append(f)
    return [f.name for f in sorted(out, key=lambda f: (f.used, f.name))]


def stale_parts(files: Sequence[CachedFile], now: float, older_than_s: float) -> list[str]:
    """Partial downloads no download in flight can still be writing: a download is cut off at
    its deadline, so a `.part` untouched for longer has been abandoned."""
    return [f.name for f in files if now - f.used > older_than_s]


def _listing(directory: Path, suffix: str) -> list[CachedFile]:
    out = []
    for path in directory.glob(f"*{suffix}"):
        try:
            st = path.stat()
        except FileNotFoundError:  # deleted meanwhile by a download that failed
            continue
        out.append(CachedFile(path.name, st.st_size, st.st_mtime))
    return out


def clean_cache_dir(
    directory: Path, max_files: int, max_bytes: int, part_age_s: float, now: float | None = None
) -> list[str]:
    """Delete what `evictions` and `stale_parts` choose; returns the names deleted. Best effort:
    a folder that is missing or not writable is left as it is (the check reports that itself)."""
    if not directory.is_dir():
        return []
    now = time.time() if now is None else now
    names = evictions(_listing(directory, KEPT_SUFFIX), max_files, max_bytes)
    names += stale_parts(_listing(directory, PART_SUFFIX), now, part_age_s)
    deleted = []
    for name in names:
        try:
            (directory / name).unlink(missing_ok=True)
            deleted.append(name)
        except OSError as e:
            log.warning("could not delete a cached artifact", extra={"file": name, "error": str(e)})
    if deleted:
        log.info("cleaned the artifact cache", extra={"deleted": deleted})
    return deleted
