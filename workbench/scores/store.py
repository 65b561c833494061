"""The teacher-score store: a persistent, checksummed cache of cross-encoder scores for (image, caption) pairs.

Teacher calls are the expensive part of distillation (one ITM forward per pair), so the trainer asks the store
first and only the misses reach the teacher; a teacher is called for a pair at most once, across runs.

Layout: one SQLite file (stdlib ``sqlite3``, WAL mode) holding rows keyed by
(teacher fingerprint, namespace, image id, caption id) with the teacher's raw outputs (logit and probability,
float64) and a 64-bit checksum of all six fields. The namespace (e.g. the dataset name) keeps two datasets with
overlapping ids apart; the fingerprint (:func:`~workbench.scores.fingerprint.fingerprint_module`) keeps two
teachers apart, so a teacher never sees another teacher's scores.

Speed: training looks up ~2,000 pairs per step, so a warm lookup must be far below a millisecond. An in-process
read cache sits in front of SQLite: int64 keys ``image_id * 2**32 + caption_id`` kept sorted in an array with
the values beside them, searched with a binary search (NumPy: single-threaded, so a busy CPU cannot stall it
in a thread barrier the way small multi-threaded torch ops can). It is loaded lazily (the rows of this store's
fingerprint and namespace, verified) and updated on every write. Misses fall through to SQLite (another process
may have written them meanwhile). What the teacher computes enters the cache at once and reaches SQLite in batches:
rows wait in memory until ``write_every`` of them are pending (or :meth:`TeacherScoreStore.flush`, ``close``, the
end of a run, or the process exiting normally), then one transaction writes them all. A training step computes a
few hundred to a few thousand scores; writing each step's in its own synchronous transaction cost ~24 s of a
1,500-step run with eight processes sharing the file, batched it is a handful of transactions a run.

Integrity: a row whose checksum does not match or whose values are not finite is never used: it counts as a
miss and in ``stats.corrupt``, and :meth:`TeacherScoreStore.get_or_compute` recomputes and overwrites it.
A file that is not a store raises ``ValueError`` when opened. Committed rows survive an interrupted process; rows
still pending when a process is killed are lost (and recomputed by whoever asks for them next).
Every SQLite failure becomes a :class:`StoreError` (a ``ValueError``) naming the file, the problem and the fix: a
damaged file (garbled pages) -> move it aside and start a new store; a store that must be written but cannot be
(read-only file or folder) -> point ``--store`` elsewhere. A read-only store opens read-only and serves lookups;
it raises only when a pair is missing and would have to be computed and stored.

Concurrency: several processes (data-parallel ranks) may share a file. Each opens its own store; writes are
short ``BEGIN IMMEDIATE`` transactions with ``ON CONFLICT DO UPDATE``, under a busy timeout, retried when SQLite
reports the database locked. Two ranks that miss the same pair at the same moment may both compute it (the same
teacher gives the same values; the last write wins). Do not share one store object across processes (open one
per process).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.checks import check_int, check_tensor

STORE_FORMAT = "cprd-workbench teacher-score store"
SCHEMA_VERSION = 1
ID_LIMIT = 2**31
"""Image and caption ids must lie in ``[0, ID_LIMIT)`` (global ids unique within a namespace)."""
_LOAD_CHUNK = 1 << 18  # rows per fetch when the read cache loads a scope

ComputeFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``compute(image_ids long [p], caption_ids long [p]) -> (logits float [p], probs float [p])``, ids on CPU."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scopes (
    scope_id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    namespace TEXT NOT NULL,
    UNIQUE (fingerprint, namespace)
);
CREATE TABLE IF NOT EXISTS scores (
    scope_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    caption_id INTEGER NOT NULL,
    logit REAL NOT NULL,
    prob REAL NOT NULL,
    checksum INTEGER NOT NULL,
    PRIMARY KEY (scope_id, image_id, caption_id)
) WITHOUT ROWID;
"""
# Values are read defensively: a damaged cell of another type becomes NULL (-> NaN -> corrupt).
_SELECT = (
    "CASE WHEN typeof({p}logit) = 'real' THEN {p}logit END, CASE WHEN typeof({p}prob) = 'real' THEN {p}prob END, "
    "CASE WHEN typeof({p}checksum) = 'integer' THEN {p}checksum ELSE 0 END"
)
_UPSERT = (
    "INSERT INTO scores (scope_id, image_id, caption_id, logit, prob, checksum) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (scope_id, image_id, caption_id) DO UPDATE SET "
    "logit = excluded.logit, prob = excluded.prob, checksum = excluded.checksum"
)


class StoreError(ValueError):
    """The store file cannot serve a request: damaged, read-only where a write is needed, or another SQLite failure.
    The message names the file, the problem and the fix."""


def read_only_message(path: Path, doing: str) -> str:
    """The one-line error for a store that must be written (``doing``) but is read-only."""
    return (f"teacher-score store {path} is read-only (the file or its folder cannot be written) and {doing} needs "
            f"to write to it: pass --store with a writable path (a new store is created there), or copy this one "
            f"first (cp {path} runs/teacher_scores.sqlite; --store runs/teacher_scores.sqlite)")


def damaged_message(path: Path, err: Exception) -> str:
    """The one-line error for a store whose file SQLite reports damaged."""
    return (f"teacher-score store {path} is damaged (SQLite: {err}): move it aside and start a new one with "
            f"`mv {path} {path}.damaged` (scores are recomputed as needed), or pass --store with another path")


@contextmanager
def sqlite_errors(path: Path, doing: str) -> Iterator[None]:
    """Turn any ``sqlite3.Error`` (and an OS error creating the file) raised inside into a :class:`StoreError`."""
    try:
        yield
    except sqlite3.Error as err:
        text = str(err).lower()
        if "readonly" in text or "read-only" in text or ("unable to open" in text and not store_writable(path)):
            raise StoreError(read_only_message(path, doing)) from err
        if "malformed" in text or "not a database" in text or "corrupt" in text:
            raise StoreError(damaged_message(path, err)) from err
        raise StoreError(f"teacher-score store {path}: SQLite failed while {doing}: {err}") from err
    except PermissionError as err:
        raise StoreError(read_only_message(path, doing)) from err


def store_writable(path: Path) -> bool:
    """Whether SQLite can write ``path`` (the file, if it exists, and its folder, for the WAL and lock files)."""
    folder = path.parent if path.parent.exists() else next((p for p in path.parents if p.exists()), Path("."))
    return os.access(folder, os.W_OK | os.X_OK) and (not path.exists() or os.access(path, os.W_OK))


@dataclass(frozen=True)
class StoreStats:
    """Counters of one store object (this process), cumulative since it was opened.

    Attributes:
        hits: requested pairs answered from the store (each pair of each request counts, duplicates included).
        misses: requested pairs absent (or corrupt) when asked; ``hits + misses`` = pairs requested.
        computed_pairs: distinct pairs sent to the teacher.
        teacher_calls: calls of ``compute`` (one per batch of misses).
        corrupt: stored rows found corrupt (checksum mismatch or non-finite) when a request read them.
        seconds_lookup: time spent finding pairs (cache and SQLite).
        seconds_compute: time spent in ``compute`` (the teacher).
        seconds_write: time spent writing to SQLite and the cache.
    """

    hits: int = 0
    misses: int = 0
    computed_pairs: int = 0
    teacher_calls: int = 0
    corrupt: int = 0
    seconds_lookup: float = 0.0
    seconds_compute: float = 0.0
    seconds_write: float = 0.0

    @property
    def requested(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """``hits / requested`` (NaN before any request)."""
        return self.hits / self.requested if self.requested else float("nan")

    def __sub__(self, other: StoreStats) -> StoreStats:
        """Counters accumulated between two snapshots: ``after - before``."""
        return StoreStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def postfix(self) -> dict[str, str]:
        """A short summary for a tqdm progress-bar postfix: hit rate, teacher pairs, corrupt rows."""
        rate = "-" if not self.requested else f"{100 * self.hit_rate:.1f}%"
        return {"store_hit": rate, "teacher_pairs": str(self.computed_pairs), "corrupt": str(self.corrupt)}


class TeacherScoreStore:
    """Persistent teacher scores for one teacher (``fingerprint``) and one dataset (``namespace``).

    Example::

        store = TeacherScoreStore("runs/teacher_scores.sqlite", fingerprint_module(teacher, cfg), namespace="coco")
        logits, probs = store.get_or_compute(image_ids, caption_ids, teacher_scores, batch_size=1024)

    Args:
        path: the SQLite file (created with its folders if absent).
        fingerprint: the teacher's fingerprint.
        namespace: the id space, e.g. the dataset name.
        cache: keep the in-process read cache (``False`` = every lookup queries SQLite; for benchmarks).
        dtype: dtype of returned logits/probs (stored as float64 regardless).
        timeout: seconds SQLite waits on a lock held by another process before reporting it.
        read_through: on a cache miss, look in SQLite again before computing (sees rows other processes wrote
            since this store loaded its cache; costs a query per miss). Off by default: a teacher is deterministic,
            so at worst two processes compute the same pair.
        write_every: computed rows kept pending in memory (already served from the cache) before one transaction
            writes them; 0 writes every computed batch at once. Without the cache rows are always written at once.

    Raises:
        ValueError: ``path`` exists but is not a store (not SQLite, another schema, a newer schema version).
        StoreError: the file is damaged, or read-only where a write is needed (when opening: a store that does
            not know this teacher yet); later calls raise it too (e.g. a read-only store asked for a missing pair).
    """

    def __init__(
        self,
        path: str | Path,
        fingerprint: str,
        namespace: str = "default",
        *,
        cache: bool = True,
        dtype: torch.dtype = torch.float32,
        timeout: float = 30.0,
        read_through: bool = False,
        write_every: int = 1 << 16,
    ):
        for name, value in (("fingerprint", fingerprint), ("namespace", namespace)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str, got {value!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.path, self.fingerprint, self.namespace = Path(path), fingerprint, namespace
        self.dtype, self.use_cache = dtype, bool(cache)
        self._stats = StoreStats()
        self._seed = int.from_bytes(hashlib.blake2b(f"{fingerprint}\0{namespace}".encode(), digest_size=8).digest())
        self.writable = str(self.path) == ":memory:" or store_writable(self.path)
        with sqlite_errors(self.path, "opening the store"):
            self._conn = _connect(self.path, timeout, self.writable)
        try:
            with sqlite_errors(self.path, "registering a teacher it holds no scores of"):
                self._scope = _retry(self._ensure_scope)
        except BaseException:
            self._conn.close()
            raise
        self._keys: np.ndarray | None = None  # int64 [N], sorted; None until loaded
        self._vals = np.empty((0, 2), dtype=np.float64)  # [N, 2] (logit, prob)
        self._new_keys = np.empty(0, dtype=np.int64)  # recent additions, sorted, folded into _keys in batches
        self._new_vals = np.empty((0, 2), dtype=np.float64)
        self._bad = np.empty(0, dtype=np.int64)  # keys whose stored rows failed verification at load
        self.read_through = bool(read_through)
        self.write_every = check_int("write_every", write_every, min_value=0)
        self._pending = _Pending(self._conn, self._scope, self.path)  # computed rows not yet in SQLite
        self._lock = self._pending.lock  # one transaction at a time on this connection, whichever thread
        self._finalizer = weakref.finalize(self, self._pending.flush)  # a normal exit writes what is pending

    # --- public API -------------------------------------------------------------------------------------------

    @property
    def stats(self) -> StoreStats:
        """A snapshot of the counters (subtract two snapshots to measure an interval)."""
        return self._stats

    def lookup(self, image_ids: torch.Tensor, caption_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stored scores without computing anything.

        Args:
            image_ids, caption_ids: long [P] (any device).

        Returns:
            ``(found bool [P], logits [P], probs [P])``; logits/probs are NaN where not found.
        """
        keys, device = _pair_keys(image_ids, caption_ids)
        uniq, inverse = np.unique(keys, return_inverse=True)
        with sqlite_errors(self.path, "reading scores"):
            found, vals = self._find(uniq, inverse)
        return torch.from_numpy(found[inverse]).to(device), *self._out(vals[inverse], device)

    def get_or_compute(
        self, image_ids: torch.Tensor, caption_ids: torch.Tensor, compute: ComputeFn, *, batch_size: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored scores, computing and storing the missing (or corrupt) ones with ``compute``.

        Args:
            image_ids, caption_ids: long [P] (any device); duplicates are computed once.
            compute: the teacher, ``compute(image_ids [p], caption_ids [p]) -> (logits [p], probs [p])``, called
                under ``torch.no_grad()`` with CPU ids, only for misses, ``p <= batch_size`` pairs at a time.
            batch_size: the most pairs per ``compute`` call.

        Returns:
            ``(logits [P], probs [P])`` on ``image_ids``' device, dtype ``self.dtype``.
        """
        check_int("batch_size", batch_size, min_value=1)
        keys, device = _pair_keys(image_ids, caption_ids)
        uniq, inverse = np.unique(keys, return_inverse=True)
        with sqlite_errors(self.path, "reading scores"):
            found, vals = self._find(uniq, inverse)
        missing = np.flatnonzero(~found)
        if missing.size and not self.writable:  # before the teacher runs: its work could not be kept
            raise StoreError(read_only_message(self.path, f"scoring {missing.size} pair(s) it does not hold"))
        for start in range(0, missing.size, batch_size):
            rows = missing[start : start + batch_size]
            vals[rows] = self._compute_and_store(uniq[rows], compute)
        return self._out(vals[inverse], device)

    def put(
        self, image_ids: torch.Tensor, caption_ids: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor
    ) -> None:
        """Store scores (overwriting existing rows of the same pairs). All long/float [P]."""
        keys, _ = _pair_keys(image_ids, caption_ids)
        vals = _check_scores(logits, probs, keys.size, "put")
        uniq, first = _last_of_each(keys)
        if not self.writable:
            raise StoreError(read_only_message(self.path, "storing scores"))
        self.flush()  # rows pending from earlier computations first: the last write of a pair wins
        self._write(uniq, vals[first])

    def flush(self) -> None:
        """Write the computed rows still pending (one transaction); a no-op when none are."""
        if self._pending.rows:
            start = time.perf_counter()
            self._pending.flush()
            self._bump(seconds_write=time.perf_counter() - start)

    @property
    def pending(self) -> int:
        """Computed rows not yet written to SQLite (served from the cache meanwhile)."""
        return self._pending.rows

    def __len__(self) -> int:
        """Rows stored for this fingerprint and namespace (valid or not)."""
        self.flush()
        query = "SELECT COUNT(*) FROM scores WHERE scope_id = ?"
        with self._lock, sqlite_errors(self.path, "counting rows"):
            return self._conn.execute(query, (self._scope,)).fetchone()[0]

    def close(self) -> None:
        """Write the pending rows and close the SQLite connection (idempotent)."""
        try:
            self._finalizer()  # flushes once; later calls do nothing
        finally:
            with self._lock:
                self._conn.close()

    def __enter__(self) -> TeacherScoreStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        fp = self.fingerprint[:12]
        return f"TeacherScoreStore({str(self.path)!r}, fingerprint={fp!r}..., namespace={self.namespace!r})"

    # --- lookup -------------------------------------------------------------------------------------------------

    def _find(self, uniq: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Look up sorted distinct keys int64 [U] (cache, then SQLite): (found bool [U], values float64 [U, 2]).

        Counts hits/misses per requested pair (``inverse`` [P] maps requests to ``uniq``).
        """
        start = time.perf_counter()
        found = np.zeros(uniq.size, dtype=bool)
        vals = np.full((uniq.size, 2), np.nan)
        if self.use_cache:
            self._load_cache()
            found, vals = self._cache_search(uniq)
        corrupt = 0
        if not found.all() and (self.read_through or not self.use_cache):
            rows = np.flatnonzero(~found)
            got, got_vals, corrupt = self._select(uniq[rows])
            found[rows[got]], vals[rows[got]] = True, got_vals
            if self.use_cache and got.any():
                self._cache_add(uniq[rows[got]], got_vals)
        elif not found.all():  # misses are not re-read from SQLite; rows known to be corrupt still count
            corrupt = int(np.isin(uniq[~found], self._bad, assume_unique=True).sum())
        hits = int(found[inverse].sum())
        self._bump(hits=hits, misses=inverse.size - hits, corrupt=corrupt,
                   seconds_lookup=time.perf_counter() - start)
        return found, vals

    def _load_cache(self) -> None:
        """Read and verify every row of this scope once; corrupt rows stay out (read again, and counted, if asked).

        Rows are fetched ``_LOAD_CHUNK`` at a time, so the Python row objects never hold the whole store (fetching
        4.4 million rows at once peaked at 1.9 GB; the arrays they become take 24 bytes a row).
        """
        if self._keys is not None:
            return
        keys, vals, bad = [np.empty(0, dtype=np.int64)], [np.empty((0, 2))], [np.empty(0, dtype=np.int64)]
        with self._lock:
            cursor = self._conn.execute(
                f"SELECT image_id, caption_id, {_SELECT.format(p='')} FROM scores WHERE scope_id = ?", (self._scope,)
            )
            while rows := cursor.fetchmany(_LOAD_CHUNK):
                img, cap, v, ok = self._verify(rows)
                keys.append(img[ok] * 2**32 + cap[ok])
                vals.append(v[ok])
                bad.append(img[~ok] * 2**32 + cap[~ok])
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._vals = all_keys[order], np.concatenate(vals)[order]
        self._bad = np.unique(np.concatenate(bad))

    def _cache_search(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct keys int64 [U] -> (found bool [U], values float64 [U, 2]) from the main and recent caches."""
        found, vals = _search(self._keys, self._vals, keys)
        if self._new_keys.size and not found.all():
            rows = np.flatnonzero(~found)
            f2, v2 = _search(self._new_keys, self._new_vals, keys[rows])
            found[rows[f2]], vals[rows[f2]] = True, v2[f2]
        return found, vals

    def _cache_add(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Add sorted distinct keys [m] to the small recent cache; fold it into the main one when it grows.

        Inserting into the main sorted arrays copies them (O(N)); batching the inserts keeps a step's cost
        independent of how many scores are cached.
        """
        in_main = _search(self._keys, self._vals, keys)[0]
        if in_main.any():  # overwrites of keys already in the main cache: updated in place there only
            self._keys, self._vals = _merge(self._keys, self._vals, keys[in_main], vals[in_main])
        self._new_keys, self._new_vals = _merge(self._new_keys, self._new_vals, keys[~in_main], vals[~in_main])
        if self._new_keys.size > max(1 << 16, self._keys.size // 8):
            self._keys, self._vals = _merge(self._keys, self._vals, self._new_keys, self._new_vals)
            self._new_keys, self._new_vals = np.empty(0, dtype=np.int64), np.empty((0, 2))
        if self._bad.size:
            self._bad = np.setdiff1d(self._bad, keys, assume_unique=True)

    def _select(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Query SQLite for sorted keys int64 [m]: (found bool [m], values float64 [f, 2] of the found, corrupt)."""
        img, cap = keys // 2**32, keys % 2**32
        conn = self._conn
        with self._lock:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (image_id INTEGER NOT NULL, "
                         "caption_id INTEGER NOT NULL)")
            conn.execute("BEGIN")
            try:
                conn.execute("DELETE FROM temp.wanted")
                conn.executemany("INSERT INTO temp.wanted VALUES (?, ?)", zip(img.tolist(), cap.tolist(), strict=True))
                rows = conn.execute(
                    f"SELECT s.image_id, s.caption_id, {_SELECT.format(p='s.')} FROM temp.wanted AS w JOIN scores AS s "
                    "ON s.scope_id = ? AND s.image_id = w.image_id AND s.caption_id = w.caption_id",
                    (self._scope,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        r_img, r_cap, r_vals, ok = self._verify(rows)
        pos = np.searchsorted(keys, r_img[ok] * 2**32 + r_cap[ok])  # keys are sorted (np.unique)
        found_vals = np.full((keys.size, 2), np.nan)
        found_vals[pos] = r_vals[ok]
        found = np.zeros(keys.size, dtype=bool)
        found[pos] = True
        return found, found_vals[found], int((~ok).sum())

    def _verify(self, rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows (img, cap, logit, prob, checksum) -> (img [n], cap [n], values float64 [n, 2], ok bool [n])."""
        if not rows:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty((0, 2)), np.empty(0, dtype=bool)
        img, cap, logit, prob, check = zip(*rows, strict=True)
        img, cap, check = (np.array(c, dtype=np.int64) for c in (img, cap, check))
        logit, prob = (np.array(c, dtype=np.float64) for c in (logit, prob))  # NULL (damaged cell) -> NaN
        ok = np.isfinite(logit) & np.isfinite(prob) & (check == self._checksums(img, cap, logit, prob))
        ok &= (img >= 0) & (img < ID_LIMIT) & (cap >= 0) & (cap < ID_LIMIT)
        return img, cap, np.stack([logit, prob], axis=1), ok

    def _checksums(self, img: np.ndarray, cap: np.ndarray, logit: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """int64 [n]: a chained splitmix64 hash of (fingerprint+namespace, image, caption, logit bits, prob bits).

        Each step is a bijection of its input, so a change to any single field always changes the checksum.
        """
        h = np.full(img.shape, self._seed, dtype=np.uint64)
        bits = [np.ascontiguousarray(x, dtype=np.float64).view(np.uint64) for x in (logit, prob)]
        for field in (img.astype(np.uint64), cap.astype(np.uint64), *bits):
            h = _mix64(h ^ field)
        return h.view(np.int64)

    # --- compute and write --------------------------------------------------------------------------------------

    def _compute_and_store(self, keys: np.ndarray, compute: ComputeFn) -> np.ndarray:
        """Call the teacher on distinct keys int64 [p], store the result, return values float64 [p, 2]."""
        start = time.perf_counter()
        with torch.no_grad():
            out = compute(torch.from_numpy(keys // 2**32), torch.from_numpy(keys % 2**32))
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(f"compute must return a pair (logits [p], probs [p]), got {type(out).__name__}")
        vals = _check_scores(out[0], out[1], keys.size, "compute")
        self._bump(teacher_calls=1, computed_pairs=keys.size, seconds_compute=time.perf_counter() - start)
        self._write(keys, vals, defer=True)
        return vals

    def _write(self, keys: np.ndarray, vals: np.ndarray, defer: bool = False) -> None:
        """Upsert sorted distinct keys int64 [p] with values float64 [p, 2] and update the cache; with ``defer`` (and
        a loaded cache) the SQLite write waits until ``write_every`` rows are pending."""
        start = time.perf_counter()
        img, cap = keys // 2**32, keys % 2**32
        logit, prob = vals[:, 0], vals[:, 1]
        check = self._checksums(img, cap, logit, prob)
        cached = self.use_cache and self._keys is not None
        self._pending.add(img, cap, logit, prob, check)
        if not (defer and cached) or self._pending.rows >= self.write_every:
            self._pending.flush()
        if cached:
            self._cache_add(keys, vals)
        self._bump(seconds_write=time.perf_counter() - start)

    def _ensure_scope(self) -> int:
        """The scope id of (fingerprint, namespace), created if new."""
        query = "SELECT scope_id FROM scopes WHERE fingerprint = ? AND namespace = ?"
        row = self._conn.execute(query, (self.fingerprint, self.namespace)).fetchone()
        if row is None:
            insert = "INSERT OR IGNORE INTO scopes (fingerprint, namespace) VALUES (?, ?)"
            _transaction(self._conn, lambda c: c.execute(insert, (self.fingerprint, self.namespace)))
            row = self._conn.execute(query, (self.fingerprint, self.namespace)).fetchone()
        return int(row[0])

    def _bump(self, **delta: float) -> None:
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in delta.items()})

    def _out(self, vals: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 [P, 2] -> (logits [P], probs [P]) of ``self.dtype`` on ``device``."""
        as_numpy = {torch.float32: np.float32, torch.float64: np.float64}.get(self.dtype, np.float64)
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, as torch would make it
            out = torch.from_numpy(np.ascontiguousarray(vals.T, dtype=as_numpy)).to(device=device, dtype=self.dtype)
        return out[0], out[1]  # [2, P] -> two [P]


class _Pending:
    """Rows computed but not yet written: column arrays appended per batch, written in one transaction by
    :meth:`flush` (also called by the store's finalizer when the process exits, so it holds no store reference)."""

    def __init__(self, conn: sqlite3.Connection, scope: int, path: Path):
        self.conn, self.scope, self.path, self.parts, self.rows = conn, scope, path, [], 0
        self.lock = threading.RLock()

    def add(self, *columns: np.ndarray) -> None:
        with self.lock:
            self.parts.append(columns)
            self.rows += columns[0].size

    def flush(self) -> None:
        with self.lock:
            if not self.parts:
                return
            img, cap, logit, prob, check = (np.concatenate(c) for c in zip(*self.parts, strict=True))
            rows = list(zip([self.scope] * img.size, img.tolist(), cap.tolist(), logit.tolist(), prob.tolist(),
                            check.tolist(), strict=True))  # in order: a pair written twice keeps its last values
            with sqlite_errors(self.path, "storing teacher scores"):
                _retry(lambda: _transaction(self.conn, lambda c: c.executemany(_UPSERT, rows)))
            self.parts, self.rows = [], 0


# --- SQLite helpers ---------------------------------------------------------------------------------------------


def _connect(path: Path, timeout: float, writable: bool = True) -> sqlite3.Connection:
    """Open ``path`` as a store (creating it if absent or empty); raise ``ValueError`` if it is something else.

    Not ``writable`` (the file or its folder is read-only): opened read-only (``immutable`` when the folder is
    read-only, as no WAL index can be made there); an absent or empty file then cannot become a store.
    """
    if path.is_dir():
        raise ValueError(f"teacher-score store path {path} is a directory; expected an SQLite file")
    if not path.parent.is_dir() and str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    if not writable and not path.exists():
        raise StoreError(read_only_message(path, "creating a new store"))
    # check_same_thread=False: a store opened in a training thread (a notebook panel) is flushed and closed from
    # the main thread; the store's lock keeps its transactions from interleaving.
    if writable:
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    else:
        flags = "mode=ro" + ("" if os.access(path.parent, os.W_OK | os.X_OK) else "&immutable=1")
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?{flags}"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        tables = _tables(conn, path)
        if not tables and not writable:
            raise StoreError(read_only_message(path, "creating a new store"))
        if not tables:
            _retry(lambda: _create(conn))
        else:
            _check_schema(conn, path, tables)
        if writable:
            _retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _tables(conn: sqlite3.Connection, path: Path) -> set[str]:
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        if _is_sqlite_file(path) and "unable to open" not in str(err) and "readonly" not in str(err):
            raise StoreError(damaged_message(path, err)) from err
        if "unable to open" in str(err) or "readonly" in str(err):
            raise
        raise ValueError(
            f"{path} is not a teacher-score store: expected an SQLite database, but SQLite says: {err}"
        ) from err


def _is_sqlite_file(path: Path) -> bool:
    """Whether ``path`` starts with SQLite's file header (a damaged store, rather than another kind of file)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")

    def create(c: sqlite3.Connection) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                c.execute(statement)
        c.executemany(
            "INSERT OR IGNORE INTO store_meta (key, value) VALUES (?, ?)",
            [("format", STORE_FORMAT), ("schema_version", str(SCHEMA_VERSION))],
        )

    _transaction(conn, create)


def _check_schema(conn: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    expected = f"a {STORE_FORMAT} (tables store_meta, scopes, scores; schema version {SCHEMA_VERSION})"
    if "store_meta" not in tables:
        raise ValueError(f"{path} is an SQLite database but not a teacher-score store: it has tables "
                         f"{sorted(tables)}; expected {expected}")
    meta = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
    if meta.get("format") != STORE_FORMAT or not str(meta.get("schema_version", "")).isdigit():
        raise ValueError(f"{path} has a store_meta table but not a teacher-score store's metadata "
                         f"(format={meta.get('format')!r}); expected {expected}")
    version = int(meta["schema_version"])
    if version > SCHEMA_VERSION:
        raise ValueError(f"{path} was written by a newer workbench (store schema version {version}); "
                         f"this version reads schema version {SCHEMA_VERSION}: upgrade the workbench")
    if not {"scopes", "scores"} <= tables:
        raise ValueError(f"{path} is a damaged teacher-score store: tables {sorted({'scopes', 'scores'} - tables)} "
                         f"are missing; expected {expected}")


def _transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], Any]) -> None:
    """Run ``body`` in a ``BEGIN IMMEDIATE`` transaction (takes the write lock up front), rolling back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _retry(action: Callable[[], Any], attempts: int = 20) -> Any:
    """Run ``action``, retrying with backoff while SQLite reports the database locked or busy."""
    delay = 0.01
    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError as err:
            transient = "locked" in str(err) or "busy" in str(err)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 1.0)
    raise AssertionError("unreachable")


# --- keys, values and the sorted cache --------------------------------------------------------------------------


def _pair_keys(image_ids: torch.Tensor, caption_ids: torch.Tensor) -> tuple[np.ndarray, torch.device]:
    """Validate ids long [P] and return (keys ``img * 2**32 + cap`` int64 [P], the ids' device)."""
    check_tensor("image_ids", image_ids, ndim=1, dtype="int")
    check_tensor("caption_ids", caption_ids, shape=tuple(image_ids.shape), dtype="int")
    img, cap = (x.detach().cpu().numpy().astype(np.int64, copy=False) for x in (image_ids, caption_ids))
    for name, ids in (("image_ids", img), ("caption_ids", cap)):
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= ID_LIMIT):
            raise ValueError(f"{name} must lie in [0, 2**31), got values in [{int(ids.min())}, {int(ids.max())}]")
    return img * 2**32 + cap, image_ids.device


def _check_scores(logits: Any, probs: Any, p: int, source: str) -> np.ndarray:
    """Validate teacher outputs (float [p] each, finite, probs in [0, 1]) -> float64 [p, 2]."""
    out = []
    for name, x in (("logits", logits), ("probs", probs)):
        check_tensor(f"{source} {name}", x, dtype="float")
        if tuple(x.shape) != (p,):
            raise ValueError(f"{source} must give {name} of shape ({p},) for {p} pairs, got {tuple(x.shape)}")
        x = x.detach().cpu().numpy().astype(np.float64) + 0.0  # + 0.0: -0.0 -> 0.0 (SQLite may store it as int 0)
        if not np.isfinite(x).all():
            raise ValueError(f"{source} gave {int((~np.isfinite(x)).sum())} non-finite {name}; nothing was stored")
        out.append(x)
    if ((out[1] < 0) | (out[1] > 1)).any():
        raise ValueError(f"{source} gave probs outside [0, 1] (min {out[1].min():.4g}, max {out[1].max():.4g})")
    return np.stack(out, axis=1)


def _last_of_each(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys int64 [U] and, for each, the position of its last occurrence in ``keys`` [P]."""
    reverse = keys[::-1]
    uniq, first_in_reverse = np.unique(reverse, return_index=True)
    return uniq, keys.size - 1 - first_in_reverse


def _search(keys: np.ndarray, vals: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cache lookup: wanted int64 [U] -> (found bool [U], values float64 [U, 2], NaN where not found)."""
    if keys.size == 0:
        return np.zeros(wanted.size, dtype=bool), np.full((wanted.size, 2), np.nan)
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    found = keys[pos] == wanted
    out = vals[pos]
    out[~found] = np.nan
    return found, out


def _merge(keys: np.ndarray, vals: np.ndarray, new_keys: np.ndarray, new_vals: np.ndarray):
    """Insert sorted distinct ``new_keys`` [m] (values [m, 2]) into the sorted cache, overwriting equal keys."""
    pos = np.searchsorted(keys, new_keys)
    exists = np.zeros(new_keys.size, dtype=bool)
    inside = pos < keys.size
    exists[inside] = keys[pos[inside]] == new_keys[inside]
    vals[pos[exists]] = new_vals[exists]  # in place: lookups hand out copies, never views
    add = ~exists
    if not add.any():
        return keys, vals
    return np.insert(keys, pos[add], new_keys[add]), np.insert(vals, pos[add], new_vals[add], axis=0)


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (a bijection; wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))
