"""Where finished audio lives: one folder, one file per job, named `<job uuid>.<ext>`.

Names are never taken from a request as they are: `path_for` accepts only a canonical UUID and a
known format and builds the path itself, so no name can reach outside the folder. Files are
written atomically (`generation.audio.write`), so a reader sees a whole file or none.
(An S3-compatible store can take this class's place later; the worker and the API only use the
methods below.)
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np

from musicgen_server.generation import audio

log = logging.getLogger(__name__)

_NAME = re.compile(
    r"^(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(?P<ext>[a-z0-9]{1,8})$"
)
# audio.write's temporary files: ".<name>.<hex>.tmp"
_TEMP = re.compile(r"^\..+\.[0-9a-f]+\.tmp$")


def canonical_id(text: str) -> str | None:
    """The job id if `text` is a UUID in its canonical lower-case form, else None."""
    try:
        value = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return None
    canonical = str(value)
    return canonical if canonical == text else None


def parse_name(name: str) -> tuple[str, str] | None:
    """(job id, format) from a file name such as `<uuid>.wav`, or None if it is not one."""
    match = _NAME.match(name or "")
    if match is None or canonical_id(match["id"]) is None:
        return None
    fmt = audio.FORMATS.get(match["ext"])
    if fmt is None or fmt.extension != f".{match['ext']}":
        return None
    return match["id"], fmt.name


class ArtifactStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def file_name(job_id: str, fmt: str) -> str:
        canonical = canonical_id(job_id)
        if canonical is None:
            raise ValueError(f"not a job id: {job_id!r}")
        return f"{canonical}{audio.get_format(fmt).extension}"

    def path_for(self, name: str) -> Path | None:
        """The path of a stored file, or None when the name is not one this store makes."""
        if parse_name(name) is None:
            return None
        job_id, fmt = parse_name(name)  # type: ignore[misc]
        return self.folder / self.file_name(job_id, fmt)

    def put(
        self,
        job_id: str,
        fmt: str,
        samples: np.ndarray,
        sample_rate: int,
        *,
        tags: dict[str, str] | None = None,
    ) -> str:
        name = self.file_name(job_id, fmt)
        audio.write(self.folder / name, samples, sample_rate, fmt, tags=tags)
        return name

    def exists(self, name: str) -> bool:
        path = self.path_for(name)
        return path is not None and path.is_file()

    def delete(self, name: str | None) -> bool:
        path = self.path_for(name or "")
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self) -> list[str]:
        return [entry.name for entry in os.scandir(self.folder) if entry.is_file() and parse_name(entry.name)]

    def sweep(self, live: set[str], *, older_than: float = 600.0, now: float | None = None) -> int:
        """Delete files no job points at (a job deleted mid-write, a crash between writing the
        file and recording it) and abandoned temporary files, once they are `older_than` old."""
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.folder):
            if not entry.is_file():
                continue
            ours = parse_name(entry.name) is not None
            if not (ours and entry.name not in live) and not _TEMP.match(entry.name):
                continue
            try:
                if now - entry.stat().st_mtime < older_than:
                    continue
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d orphaned audio file(s)", removed)
        return removed
