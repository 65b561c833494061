"""Teacher fingerprints and the persistent teacher-score store: round trips, integrity, isolation, concurrency."""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.io import load_checkpoint, save_checkpoint
from workbench.scores.fingerprint import fingerprint_module
from workbench.scores.store import StoreStats, TeacherScoreStore, _merge

# --- fingerprints -----------------------------------------------------------------------------------------------


class _Teacher(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.BatchNorm1d(3)  # has buffers (running stats)


def _teacher(seed: int = 0) -> _Teacher:
    torch.manual_seed(seed)
    return _Teacher()


CONFIG = {"dim": 4, "head": "itm", "layers": [1, 2]}


def test_fingerprint_is_stable_and_ignores_mode_device_and_key_order() -> None:
    a = _teacher()
    fp = fingerprint_module(a, CONFIG)
    assert len(fp) == 40 and int(fp, 16) >= 0
    b = copy.deepcopy(a).eval().requires_grad_(False)
    assert fingerprint_module(b, {"layers": [1, 2], "head": "itm", "dim": 4}) == fp


def test_fingerprint_changes_with_weights_buffers_dtype_and_config() -> None:
    fp = fingerprint_module(_teacher(), CONFIG)
    assert fingerprint_module(_teacher(seed=1), CONFIG) != fp
    one_weight = _teacher()
    with torch.no_grad():
        one_weight.proj.weight[1, 2] += 1e-6
    assert fingerprint_module(one_weight, CONFIG) != fp
    buffer = _teacher()
    buffer.norm.running_mean[0] = 0.5
    assert fingerprint_module(buffer, CONFIG) != fp
    assert fingerprint_module(_teacher().double(), CONFIG) != fp
    assert fingerprint_module(_teacher(), {**CONFIG, "head": "itc"}) != fp


def test_fingerprint_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    teacher = _teacher(seed=3)
    save_checkpoint(tmp_path / "ckpt", "teacher", CONFIG, teacher.state_dict())
    meta, state = load_checkpoint(tmp_path / "ckpt", kind="teacher")
    restored = _teacher(seed=99)
    restored.load_state_dict(state)
    assert fingerprint_module(restored, meta["config"]) == fingerprint_module(teacher, CONFIG)


def test_fingerprint_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="config must be JSON-serialisable"):
        fingerprint_module(_teacher(), {"f": object()})
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        fingerprint_module("teacher", {})


# --- a fake teacher ---------------------------------------------------------------------------------------------


def _true_scores(img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per pair whatever the batch (only correctly rounded arithmetic, no SIMD-vs-scalar libm)."""
    logit = ((img * 37 + cap * 91) % 1000).double() / 100.0 - 5.0
    return logit, (logit + 5.0) / 10.0


class _Teacher2:
    """Counts calls, records batch sizes and whether grad was enabled."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.grad_enabled: list[bool] = []

    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches.append(img.numel())
        self.grad_enabled.append(torch.is_grad_enabled())
        return _true_scores(img, cap)


def _ids(*pairs: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


# --- round trip, compute path, stats ----------------------------------------------------------------------------


def test_round_trip_is_exact_across_reopen(tmp_path: Path) -> None:
    img, cap = torch.tensor([0, 5, 2**31 - 1, 7, 7]), torch.tensor([3, 0, 2**31 - 1, 8, 9])
    logits = torch.tensor([-0.0, 1e300, -2.5, 5e-324, 0.1], dtype=torch.float64)
    probs = torch.tensor([0.0, 1.0, 0.25, 0.5, 1e-12], dtype=torch.float64)
    with TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns") as store:
        store.put(img, cap, logits, probs)
    with TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns", dtype=torch.float64) as store:
        found, got_l, got_p = store.lookup(img.flip(0), cap.flip(0))
        assert found.all() and len(store) == 5 and store.stats.corrupt == 0
        assert torch.equal(got_l, logits.flip(0) + 0.0) and torch.equal(got_p, probs.flip(0))
        assert store.lookup(*_ids((1, 1)))[0].tolist() == [False]
    with TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns") as store:
        assert store.lookup(img, cap)[1].dtype == torch.float32


def test_get_or_compute_calls_the_teacher_only_for_misses(tmp_path: Path) -> None:
    teacher = _Teacher2()
    store = TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns")
    img = torch.tensor([1, 2, 3, 4, 5, 1, 2])  # the last two repeat the first two
    cap = torch.tensor([9, 8, 7, 6, 5, 9, 8])
    with torch.enable_grad():
        logits, probs = store.get_or_compute(img, cap, teacher, batch_size=2)
    want_l, want_p = _true_scores(img, cap)
    assert torch.equal(logits, want_l.float()) and torch.equal(probs, want_p.float())
    assert teacher.batches == [2, 2, 1] and teacher.grad_enabled == [False] * 3
    img2, cap2 = torch.tensor([3, 6, 5]), torch.tensor([7, 6, 5])
    logits, _ = store.get_or_compute(img2, cap2, teacher, batch_size=2)
    assert teacher.batches == [2, 2, 1, 1] and torch.equal(logits, _true_scores(img2, cap2)[0].float())


def test_stats_are_exact_on_a_scripted_sequence(tmp_path: Path) -> None:
    teacher = _Teacher2()
    store = TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns")
    store.get_or_compute(*_ids((1, 1), (1, 2), (1, 1), (2, 2)), teacher, batch_size=2)  # 4 misses, 3 distinct
    s1 = store.stats
    assert (s1.hits, s1.misses, s1.computed_pairs, s1.teacher_calls, s1.corrupt) == (0, 4, 3, 2, 0)
    store.lookup(*_ids((1, 1), (3, 3)))  # 1 hit, 1 miss
    store.get_or_compute(*_ids((1, 2), (3, 3), (4, 4)), teacher, batch_size=10)  # 1 hit, 2 misses, 1 call
    store.put(*_ids((5, 5)), torch.zeros(1), torch.zeros(1))  # no counters
    delta = store.stats - s1
    assert (delta.hits, delta.misses, delta.computed_pairs, delta.teacher_calls, delta.corrupt) == (2, 3, 2, 1, 0)
    total = store.stats
    assert total.requested == 9 and total.hit_rate == pytest.approx(2 / 9)
    assert total.seconds_lookup > 0 and total.seconds_compute > 0 and total.seconds_write > 0
    assert total.postfix() == {"store_hit": "22.2%", "teacher_pairs": "5", "corrupt": "0"}
    assert StoreStats().postfix()["store_hit"] == "-"


def test_cache_merge_matches_a_dict_oracle() -> None:
    rng = np.random.default_rng(0)
    keys, vals, oracle = np.empty(0, dtype=np.int64), np.empty((0, 2)), {}
    for _ in range(30):
        new = np.unique(rng.integers(0, 60, rng.integers(1, 12)))
        new_vals = rng.standard_normal((new.size, 2))
        keys, vals = _merge(keys, vals, new, new_vals)
        oracle.update({k: v for k, v in zip(new.tolist(), new_vals.tolist(), strict=True)})
        assert keys.tolist() == sorted(oracle) and vals.tolist() == [oracle[k] for k in sorted(oracle)]


@pytest.mark.parametrize("cache", [True, False])
def test_cached_and_sqlite_only_lookups_agree(tmp_path: Path, cache: bool) -> None:
    g = torch.Generator().manual_seed(1)
    img, cap = torch.randint(0, 50, (300,), generator=g), torch.randint(0, 50, (300,), generator=g)
    store = TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns", cache=cache, dtype=torch.float64)
    store.get_or_compute(img[:200], cap[:200], _Teacher2(), batch_size=64)
    found, logits, _ = store.lookup(img, cap)
    seen = set(zip(img[:200].tolist(), cap[:200].tolist(), strict=True))
    assert found.tolist() == [p in seen for p in zip(img.tolist(), cap.tolist(), strict=True)]
    assert torch.equal(logits[found], _true_scores(img, cap)[0][found])


# --- integrity ----------------------------------------------------------------------------------------------------


def _raw(path: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, params)
    conn.close()


@pytest.mark.parametrize("cache", [True, False])
def test_corrupt_rows_are_detected_recomputed_and_overwritten(tmp_path: Path, cache: bool) -> None:
    path = tmp_path / "s.sqlite"
    pairs = _ids((1, 1), (2, 2), (3, 3), (4, 4))
    with TeacherScoreStore(path, "fp", "ns") as store:
        store.get_or_compute(*pairs, _Teacher2())
    _raw(path, "UPDATE scores SET logit = logit + 1e-9 WHERE image_id = 2")  # value changed, checksum not
    _raw(path, "UPDATE scores SET prob = 'garbage' WHERE image_id = 3")  # a damaged cell of another type
    with TeacherScoreStore(path, "fp", "ns", cache=cache) as store:
        found, _, _ = store.lookup(*pairs)
        assert found.tolist() == [True, False, False, True] and store.stats.corrupt == 2
        teacher = _Teacher2()
        logits, _ = store.get_or_compute(*pairs, teacher)
        assert teacher.batches == [2] and store.stats.corrupt == 4  # seen again, then recomputed
        assert torch.equal(logits, _true_scores(*pairs)[0].float())
    with TeacherScoreStore(path, "fp", "ns", cache=cache) as store:
        assert store.lookup(*pairs)[0].all() and store.stats.corrupt == 0


def test_non_finite_values_are_corrupt_even_with_a_valid_checksum(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with TeacherScoreStore(path, "fp", "ns") as store:
        store.put(*_ids((1, 1)), torch.tensor([0.5]), torch.tensor([0.5]))
        bad = store._checksums(*(x.numpy() for x in (torch.tensor([1]), torch.tensor([1]),
                                                     torch.tensor([float("inf")], dtype=torch.float64),
                                                     torch.tensor([0.5], dtype=torch.float64))))
    _raw(path, "UPDATE scores SET logit = ?, checksum = ?", (float("inf"), int(bad[0])))
    with TeacherScoreStore(path, "fp", "ns") as store:
        assert store.lookup(*_ids((1, 1)))[0].tolist() == [False] and store.stats.corrupt == 1


def test_files_that_are_not_stores_are_refused_and_left_alone(tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(4096))
    other = tmp_path / "other.sqlite"
    _raw(other, "CREATE TABLE results (x INTEGER)")
    newer = tmp_path / "newer.sqlite"
    TeacherScoreStore(newer, "fp").close()
    _raw(newer, "UPDATE store_meta SET value = '2' WHERE key = 'schema_version'")
    cases = [(noise, "is not a teacher-score store: expected an SQLite database"),
             (other, r"is an SQLite database but not a teacher-score store: it has tables \['results'\]"),
             (newer, r"was written by a newer workbench \(store schema version 2\)")]
    for path, message in cases:
        before = path.read_bytes()
        with pytest.raises(ValueError, match=message) as err:
            TeacherScoreStore(path, "fp")
        assert str(path) in str(err.value)
        assert path.read_bytes() == before
    with pytest.raises(ValueError, match="is a directory"):
        TeacherScoreStore(tmp_path, "fp")


def test_bad_inputs_and_bad_teacher_outputs_raise_and_store_nothing(tmp_path: Path) -> None:
    store = TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns")
    with pytest.raises(ValueError, match=r"caption_ids must have shape \(2,\)"):
        store.lookup(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"image_ids must lie in \[0, 2\*\*31\)"):
        store.lookup(torch.tensor([-1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="fingerprint must be a non-empty str"):
        TeacherScoreStore(tmp_path / "s.sqlite", "")
    pairs = _ids((1, 1), (2, 2))
    bad_teachers = {
        r"compute must give logits of shape \(2,\) for 2 pairs, got \(2, 1\)": lambda i, c: (
            torch.zeros(2, 1), torch.zeros(2)),
        "compute gave 1 non-finite probs": lambda i, c: (torch.zeros(2), torch.tensor([0.5, float("nan")])),
        r"compute gave probs outside \[0, 1\]": lambda i, c: (torch.zeros(2), torch.tensor([0.5, 1.5])),
        "compute must return a pair": lambda i, c: torch.zeros(2),
    }
    for message, teacher in bad_teachers.items():
        with pytest.raises((ValueError, TypeError), match=message):
            store.get_or_compute(*pairs, teacher)
    assert len(store) == 0


def test_an_interrupted_computation_keeps_what_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    calls = []

    def flaky(img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(img.numel())
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _true_scores(img, cap)

    with TeacherScoreStore(path, "fp", "ns") as store, pytest.raises(KeyboardInterrupt):
        store.get_or_compute(torch.arange(5), torch.arange(5), flaky, batch_size=2)
    with TeacherScoreStore(path, "fp", "ns") as store:
        assert store.lookup(torch.arange(5), torch.arange(5))[0].tolist() == [True, True, False, False, False]


def _die_mid_transaction(path: str) -> None:
    with TeacherScoreStore(path, "fp", "ns") as store:
        store.put(torch.arange(3), torch.arange(3), *_true_scores(torch.arange(3), torch.arange(3)))
        store._conn.execute("BEGIN IMMEDIATE")
        store._conn.execute("INSERT INTO scores VALUES (1, 7, 7, 0.0, 0.0, 0)")
        os._exit(3)  # killed before COMMIT


def test_a_process_killed_mid_write_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    proc = mp.get_context("spawn").Process(target=_die_mid_transaction, args=(str(path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    with TeacherScoreStore(path, "fp", "ns") as store:
        found, logits, _ = store.lookup(torch.tensor([0, 1, 2, 7]), torch.tensor([0, 1, 2, 7]))
        assert found.tolist() == [True, True, True, False]
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- isolation and concurrency ----------------------------------------------------------------------------------


def test_another_teacher_or_namespace_never_sees_these_scores(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    pairs = _ids((1, 1), (2, 2))
    with TeacherScoreStore(path, "teacher-a", "coco") as store:
        store.put(*pairs, torch.tensor([9.0, 9.0]), torch.tensor([0.9, 0.9]))
    for fingerprint, namespace in (("teacher-b", "coco"), ("teacher-a", "flickr")):
        with TeacherScoreStore(path, fingerprint, namespace) as store:
            assert not store.lookup(*pairs)[0].any()
            teacher = _Teacher2()
            logits, _ = store.get_or_compute(*pairs, teacher)
            assert teacher.batches == [2] and torch.equal(logits, _true_scores(*pairs)[0].float())
    with TeacherScoreStore(path, "teacher-a", "coco") as store:
        assert store.lookup(*pairs)[1].tolist() == [9.0, 9.0]


def _concurrent_writer(path: str, rank: int, barrier) -> None:
    store = TeacherScoreStore(path, "fp", "shared", timeout=0.05)  # a short busy timeout exercises the retries
    barrier.wait()
    for step in range(25):
        own = torch.arange(20) + 1000 * rank + 20 * step  # disjoint between ranks
        shared = torch.arange(20) + 20 * step  # both ranks write these
        img = torch.cat([own, shared])
        store.get_or_compute(img, img % 97, _true_scores, batch_size=7)
    store.close()


def test_two_processes_writing_concurrently_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    TeacherScoreStore(path, "fp", "shared").close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_concurrent_writer, args=(path, rank, barrier)) for rank in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    img = torch.cat([torch.arange(500) + 1000, torch.arange(500) + 2000, torch.arange(500)])
    with TeacherScoreStore(path, "fp", "shared", dtype=torch.float64) as store:
        found, logits, probs = store.lookup(img, img % 97)
        assert found.all() and len(store) == 1500 and store.stats.corrupt == 0
        want_l, want_p = _true_scores(img, img % 97)
        assert torch.equal(logits, want_l) and torch.equal(probs, want_p)


def test_empty_requests_and_ids_on_another_device(tmp_path: Path) -> None:
    store = TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns")
    teacher = _Teacher2()
    logits, probs = store.get_or_compute(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), teacher)
    assert logits.shape == probs.shape == (0,) and teacher.batches == [] and store.stats.requested == 0
    if torch.cuda.is_available():
        img = torch.tensor([3, 4], device="cuda")
        logits, _ = store.get_or_compute(img, img, teacher)
        assert logits.is_cuda and torch.equal(logits.cpu(), _true_scores(img.cpu(), img.cpu())[0].float())


def test_cache_loads_in_chunks_with_the_same_values_and_corrupt_rows(tmp_path: Path, monkeypatch) -> None:
    import workbench.scores.store as store_module

    path = tmp_path / "s.sqlite"
    pairs = _ids(*[(i, 10 + i) for i in range(11)])
    with TeacherScoreStore(path, "fp", "ns") as store:
        store.get_or_compute(*pairs, _Teacher2())
    _raw(path, "UPDATE scores SET logit = logit + 1e-9 WHERE image_id IN (2, 7)")  # corrupt rows in two chunks
    monkeypatch.setattr(store_module, "_LOAD_CHUNK", 3)  # 11 rows -> 4 fetches, the last one partial
    with TeacherScoreStore(path, "fp", "ns") as store:
        found, logits, _ = store.lookup(*pairs)
        assert found.tolist() == [i not in (2, 7) for i in range(11)] and store.stats.corrupt == 2
        assert torch.equal(logits[found], _true_scores(*pairs)[0].float()[found])
        assert store._keys.size == 9 and (np.diff(store._keys) > 0).all()


# --- batched writes -------------------------------------------------------------------------------------------


def _compute_and_exit(path: str) -> None:
    store = TeacherScoreStore(path, "fp", "ns")
    store.get_or_compute(torch.arange(6), torch.arange(6), _true_scores, batch_size=4)
    assert store.pending == 6  # not yet in SQLite; the process ends without close(): its finalizer writes them


def test_computed_rows_are_written_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = TeacherScoreStore(path, "fp", "ns", write_every=10)
    other = TeacherScoreStore(path, "fp", "ns", cache=False)
    teacher = _Teacher2()
    store.get_or_compute(torch.arange(6), torch.arange(6), teacher, batch_size=4)  # 2 teacher calls, 6 rows
    assert store.pending == 6 and not other.lookup(torch.arange(6), torch.arange(6))[0].any()
    found, logits, _ = store.lookup(torch.arange(6), torch.arange(6))  # served from the cache meanwhile
    assert found.all() and torch.equal(logits, _true_scores(torch.arange(6), torch.arange(6))[0].float())
    store.get_or_compute(torch.arange(6, 12), torch.arange(6, 12), teacher, batch_size=4)  # 6 + 4 >= 10: written
    assert store.pending == 2 and other.lookup(torch.arange(12), torch.arange(12))[0].tolist() == [True] * 10 + [
        False] * 2
    store.get_or_compute(torch.tensor([50]), torch.tensor([50]), teacher)
    assert store.pending == 3 and len(store) == 13 and store.pending == 0  # len() counts what is stored: flushes
    store.get_or_compute(torch.tensor([51]), torch.tensor([51]), teacher)
    store.close()
    assert other.lookup(torch.tensor([51]), torch.tensor([51]))[0].all() and teacher.batches == [4, 2, 4, 2, 1, 1]

    proc = mp.get_context("spawn").Process(target=_compute_and_exit, args=(str(tmp_path / "exit.sqlite"),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    with TeacherScoreStore(tmp_path / "exit.sqlite", "fp", "ns") as reopened:
        assert reopened.lookup(torch.arange(6), torch.arange(6))[0].all()


def test_a_store_opened_in_a_thread_is_flushed_and_closed_from_another(tmp_path: Path) -> None:
    """A notebook panel trains (and opens the store) in a background thread; the main thread flushes and closes."""
    import threading

    box = {}

    def train() -> None:
        box["store"] = TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns")
        box["store"].get_or_compute(torch.arange(4), torch.arange(4), _true_scores)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join()
    store = box["store"]
    assert store.pending == 4
    store.close()
    with TeacherScoreStore(tmp_path / "s.sqlite", "fp", "ns") as reopened:
        assert reopened.lookup(torch.arange(4), torch.arange(4))[0].all()
