"""The result cache of a CTC run directory (``DIR/cache.sqlite``).

One row per (codec, rate point, image) job, keyed by a hash of everything that
affects its result (see :func:`ctc.runner.job_key`). Each result is committed on
its own, so an interrupted run loses only the jobs that were in flight, and a
rerun computes only what is missing. A ``meta`` table holds the run record
(configuration, image list, job plan) from which ``fcm_ctc report`` rebuilds the
outputs without running anything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .errors import CacheError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    codec TEXT NOT NULL,
    point TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class ResultCache:
    """sqlite-backed job results; use as a context manager."""

    def __init__(self, path: str | os.PathLike, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CacheError(f"no result cache at {self.path}")
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise CacheError(f"{self.path}: cache schema {version} is not {SCHEMA_VERSION}; use a new --out")
        except sqlite3.DatabaseError as e:
            raise CacheError(f"{self.path}: not a usable result cache ({e})") from None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM jobs WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT result FROM jobs WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, result in self._db.execute(f"SELECT key, result FROM jobs WHERE key IN ({marks})", chunk):
                out[key] = json.loads(result)
        return out

    def done_keys(self, keys: list[str]) -> set[str]:
        return set(self.get_many(keys))

    def put(self, key: str, codec: str, point: str, image_id: int, result: dict[str, Any]) -> None:
        """Store one job result and commit at once."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (key, codec, point, image_id, result, created) VALUES (?,?,?,?,?,?)",
                (key, codec, point, int(image_id), json.dumps(result, separators=(",", ":")), time.time()),
            )

    def set_meta(self, name: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, json.dumps(value)))

    def get_meta(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None
