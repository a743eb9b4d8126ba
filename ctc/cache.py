"""The result cache of a CTC run directory (``DIR/cache.sqlite``).

One row per (codec, rate point, image) job, keyed by a hash of its inputs (see
:func:`ctc.runner.job_key`), with the record of the files its run depended on
(``ctc.dependencies``; one ``deps`` row per distinct record). A result counts as done
only while those files are unchanged, so a rerun after an edit recomputes the jobs
whose path the edit touched. Each result is committed on its own, so an interrupted
run loses only the jobs that were in flight, and a rerun computes only what is
missing. A ``meta`` table holds the run record (configuration, image list, job
plan) from which ``fcm_ctc report`` rebuilds the outputs without running anything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .errors import CacheError

SCHEMA_VERSION = 2  # 2: the deps column and table (a version-1 cache is upgraded: its rows count as stale)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    codec TEXT NOT NULL,
    point TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    deps TEXT
);
CREATE TABLE IF NOT EXISTS deps (
    digest TEXT PRIMARY KEY,
    files TEXT NOT NULL
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
            if version == 1:  # results without a dependency record: kept for reports, recomputed by runs
                with self._db:
                    self._db.execute("ALTER TABLE jobs ADD COLUMN deps TEXT")
                self.set_meta("schema_version", SCHEMA_VERSION)
            elif version is None:
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

    def _dependency_rows(self, keys: list[str]) -> dict[str, tuple[str | None, list[tuple[str, str]] | None]]:
        out: dict[str, tuple[str | None, list[tuple[str, str]] | None]] = {}
        records: dict[str, list[tuple[str, str]]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT jobs.key, jobs.deps, deps.files FROM jobs LEFT JOIN deps ON jobs.deps = deps.digest "
                f"WHERE jobs.key IN ({marks})",
                chunk,
            )
            for key, digest, files in rows:
                if digest is None or files is None:
                    out[key] = (None, None)
                    continue
                if digest not in records:
                    records[digest] = [(str(n), str(h)) for n, h in json.loads(files)]
                out[key] = (digest, records[digest])
        return out

    def dependencies_of(self, keys: list[str]) -> dict[str, list[tuple[str, str]] | None]:
        """key -> the dependency record of its result (None: a result stored without one), for
        the keys that have a result."""
        return {k: deps for k, (_, deps) in self._dependency_rows(keys).items()}

    def done_keys(self, keys: list[str], root: Path | None = None) -> set[str]:
        """The keys whose result is stored and whose dependency record is still current (files
        named relative to `root`, default: this repository)."""
        from .dependencies import dependencies_current

        current: dict[str, bool] = {}
        done = set()
        for key, (digest, deps) in self._dependency_rows(keys).items():
            if digest is None or deps is None:
                continue
            if digest not in current:
                current[digest] = dependencies_current(deps, root)
            if current[digest]:
                done.add(key)
        return done

    def put(
        self,
        key: str,
        codec: str,
        point: str,
        image_id: int,
        result: dict[str, Any],
        deps: list[tuple[str, str]] | None = None,
    ) -> None:
        """Store one job result (and the record of the files it depended on) and commit at once."""
        from .dependencies import dependencies_digest

        digest = dependencies_digest(deps) if deps is not None else None
        with self._db:
            if deps is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO deps (digest, files) VALUES (?, ?)",
                    (digest, json.dumps([list(d) for d in deps], separators=(",", ":"))),
                )
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (key, codec, point, image_id, result, created, deps) "
                "VALUES (?,?,?,?,?,?,?)",
                (key, codec, point, int(image_id), json.dumps(result, separators=(",", ":")), time.time(), digest),
            )

    def set_meta(self, name: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, json.dumps(value)))

    def get_meta(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None
