"""Nothing lost, nothing run that should not be: each test first builds the fault the reliability issue found (a
crafted pickle, a process killed between a checkpoint's files, an existing run folder, a file as ``--out``, a
read-only or garbled store, duplicate loss names, an edited ``config.json``, Ctrl-C) and checks that the workbench
refuses it with one clear line, or recovers exactly. ``docs/reliability.md`` lists the promises and these tests."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.experiments import WORLD_PRESETS, open_workspace
from workbench.experiments.runs import check_run_folder, prepare_run_folder
from workbench.io import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, CheckpointError, read_json, sha256_file
from workbench.scores.store import StoreError, TeacherScoreStore
from workbench.training.checkpoint import (
    LEGACY_TRAINER_FILE,
    STATE_FILE,
    TENSORS_FILE,
    load_student,
    recover_checkpoint,
)
from workbench.training.config import FitConfig, LossTerm, profile
from workbench.training.loop import StopTraining, TrainingInterrupted, fit

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--world", "smoke", "--profile", "smoke"]
CPRD = (LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 2}))


def fails(capsys, argv: list[str], *phrases: str) -> str:
    """Run the CLI in-process: exit 2, one line on stderr naming the problem, no traceback."""
    try:
        rc = main(argv)
    except SystemExit as stop:
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture
def no_training(monkeypatch) -> list:
    """Record calls of the trainer that ``train_run`` reaches: a run refused up front must never train."""
    import workbench.experiments.runs as runs

    calls: list = []
    real = runs.fit

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "fit", spy)
    return calls


@contextmanager
def read_only(path: Path):
    """Make ``path`` (a file or folder) read-only for this process: ``chmod`` for a normal user; as root (which
    ignores permission bits) the immutable attribute (``chattr +i``), else the test is skipped."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield path
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root on a file system without chattr +i: cannot make a read-only path")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def smoke_train(tmp_path: Path, out: str = "run", *extra: str) -> list[str]:
    return ["train", *SMOKE, "--store", str(tmp_path / "s.sqlite"), "--steps", "2", "--eval-every", "1",
            "--no-rerank", "--out", str(tmp_path / out), *extra]


# ------------------------------------------------------------------------------------------ 1. no code runs


class Payload:
    """Unpickling this creates the marker file: what a crafted ``trainer_state.pt`` could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_in_a_checkpoint_never_runs(tmp_path, capsys):
    assert main(smoke_train(tmp_path)) == 0
    capsys.readouterr()
    ckpt, marker = tmp_path / "run" / "checkpoint", tmp_path / "payload_ran"

    def plant() -> None:
        with open(ckpt / LEGACY_TRAINER_FILE, "wb") as handle:
            pickle.dump({"optimizer": Payload(marker)}, handle)

    plant()  # beside a current checkpoint: never opened
    assert main(smoke_train(tmp_path, "run", "--resume")) == 0
    capsys.readouterr()
    # an older checkpoint: config.json without format_version, no manifest, the trainer state a pickle
    for name in (MANIFEST_FILE, TENSORS_FILE, STATE_FILE):
        (ckpt / name).unlink()
    meta = read_json(ckpt / CONFIG_FILE)
    del meta["format_version"]
    (ckpt / CONFIG_FILE).write_text(json.dumps(meta))
    plant()
    fails(capsys, smoke_train(tmp_path, "run", "--resume"), "written by an older workbench", "pickle",
          "never loaded because unpickling can run code", "--overwrite")
    assert not marker.exists()
    assert isinstance(load_student(ckpt), torch.nn.Module) and not marker.exists()  # its weights still load


# --------------------------------------------------------------------------------- 2. whole or refused


KILL_SCRIPT = """
import os, sys
from pathlib import Path
import workbench.io as io
import workbench.training.checkpoint as ck
from workbench.experiments import WORLD_PRESETS, open_workspace
from workbench.training.config import LossTerm, profile
from workbench.training.loop import fit

point, out, at_save = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
saves = [0]

def killing(module, name, after=lambda *a, **k: True):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if saves[0] == at_save and after(*args, **kwargs):
            os._exit(137)  # as SIGKILL: no cleanup, no finally
        return result
    setattr(module, name, wrapper)

real_save = ck.save_trainer_state
def counting(*args, **kwargs):
    saves[0] += 1
    return real_save(*args, **kwargs)
ck.save_trainer_state = counting
import workbench.training.loop as loop
loop.save_trainer_state = counting

if point == "trainer_tensors":
    killing(ck, "save_tensors")
elif point == "trainer_json":
    killing(ck, "write_json")
elif point == "weights":
    killing(io, "save_tensors")
elif point == "config":
    killing(io, "write_json", lambda path, obj: Path(path).name == "config.json")
elif point == "manifest":
    killing(io, "write_manifest")
elif point in ("swap", "swap_done"):
    name = "checkpoint.old" if point == "swap" else "checkpoint"
    killing(ck.os, "replace", lambda src, dst: Path(dst).name == name)

ws = open_workspace(WORLD_PRESETS["smoke"], store_path=None)
cfg = profile("smoke", steps=6, eval_every=2, checkpoint_every=1, losses=(LossTerm("itc"),
              LossTerm("cprd", 1.0, {"validity": "top", "m": 2})))
import torch
torch.manual_seed(0)
fit(cfg, ws.world, ws.new_student(), teacher_scores=ws.teacher_scores(), out_dir=out)
print("not killed")
"""


@pytest.fixture(scope="module")
def smoke_ws():
    return open_workspace(WORLD_PRESETS["smoke"], store_path=None)


def kill_cfg() -> FitConfig:
    return profile("smoke", steps=6, eval_every=2, checkpoint_every=1, losses=CPRD)


@pytest.fixture(scope="module")
def uninterrupted(smoke_ws, tmp_path_factory):
    torch.manual_seed(0)
    state = fit(kill_cfg(), smoke_ws.world, smoke_ws.new_student(), teacher_scores=smoke_ws.teacher_scores(),
                out_dir=tmp_path_factory.mktemp("full"))
    return state.history, [p.detach().clone() for p in state.student.state_dict().values()]


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith(".tmp") or p.name.endswith((".new", ".old")))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["trainer_tensors", "trainer_json", "weights", "config", "manifest", "swap",
                                   "swap_done"])
def test_a_kill_between_the_checkpoint_files_resumes_exactly(tmp_path, smoke_ws, uninterrupted, point):
    """SIGKILL-like exits at every point of the 3rd checkpoint save (step 3): the folder then holds the step-2
    checkpoint whole, or the swap in progress; resuming completes or undoes it and ends exactly as a run that was
    never interrupted, with no temporaries left."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                           os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, point, str(out), "3"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    if point not in ("swap", "swap_done"):
        assert read_json(out / "checkpoint" / CONFIG_FILE)["step"] == 2  # the previous checkpoint, untouched
        assert (out / "checkpoint.new").is_dir()  # the partial one, beside it
    torch.manual_seed(1)
    resumed = fit(kill_cfg(), smoke_ws.world, smoke_ws.new_student(), teacher_scores=smoke_ws.teacher_scores(),
                  out_dir=out, resume=True)
    history, weights = uninterrupted
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in history]
    assert all(torch.equal(a, b) for a, b in zip(resumed.student.state_dict().values(), weights, strict=True))
    assert leftovers(tmp_path) == [] and read_json(out / "checkpoint" / CONFIG_FILE)["step"] == 6


def test_files_from_two_different_saves_are_refused(tmp_path, smoke_ws):
    """The issue's state: trainer state of step 3 beside weights and config of step 2 (written in place)."""
    cfg = profile("smoke", steps=3, eval_every=3, losses=(LossTerm("itc"),))

    def stop_at_2(step: int, row: dict) -> None:
        if step == 2:
            raise StopTraining

    fit(cfg, smoke_ws.world, smoke_ws.new_student(), out_dir=tmp_path / "a", step_callbacks=(stop_at_2,))
    fit(cfg, smoke_ws.world, smoke_ws.new_student(), out_dir=tmp_path / "b")
    shutil.copy(tmp_path / "b" / "checkpoint" / STATE_FILE, tmp_path / "a" / "checkpoint" / STATE_FILE)
    with pytest.raises(CheckpointError, match=r"trainer\.json is corrupt or was edited"):
        fit(cfg, smoke_ws.world, smoke_ws.new_student(), out_dir=tmp_path / "a", resume=True)
    (tmp_path / "b" / "checkpoint" / MANIFEST_FILE).unlink()  # killed before the manifest: incomplete
    with pytest.raises(CheckpointError, match=r"is incomplete: manifest\.json is missing"):
        load_student(tmp_path / "b" / "checkpoint")


def test_recovery_removes_partial_saves_and_temporaries(tmp_path):
    ckpt = tmp_path / "checkpoint"
    (tmp_path / "checkpoint.new").mkdir()
    (tmp_path / "checkpoint.new" / ".model.safetensors.x1.tmp").write_bytes(b"partial")
    (tmp_path / "checkpoint.old").mkdir()
    assert recover_checkpoint(ckpt)[0].startswith("restored the previous checkpoint")  # .new is not whole
    assert ckpt.is_dir() and leftovers(tmp_path) == []
    (tmp_path / ".config.json.x2.tmp").write_text("{")
    prepare_run_folder(tmp_path, resume=True)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- 3. nothing overwritten


def test_an_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys, no_training):
    assert main(smoke_train(tmp_path)) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    calls = len(no_training)
    fails(capsys, smoke_train(tmp_path), "already holds a run", "--resume", "--overwrite")
    fails(capsys, smoke_train(tmp_path, "run", "--resume", "--overwrite"), "pass one of them")
    fails(capsys, smoke_train(tmp_path, "fresh", "--resume"), "holds no checkpoint to continue", "drop --resume")
    assert len(no_training) == calls and not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (run / "notes.txt").write_text("mine")
    assert main(smoke_train(tmp_path, "run", "--overwrite", "--seed", "1")) == 0
    assert read_json(run / "config.json")["fit"]["seed"] == 1 and (run / "notes.txt").read_text() == "mine"


def test_overwrite_removes_the_old_run_before_training(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    for name in ("config.json", "history.json", "metrics.json", "eval_test.json", ".metrics.json.x.tmp"):
        (run / name).write_text("{}")
    (run / "mine.txt").write_text("kept")
    with pytest.raises(ValueError, match="already holds a run"):
        check_run_folder(run)
    prepare_run_folder(run, overwrite=True)  # a kill after this leaves no old config/metrics beside a new checkpoint
    assert sorted(p.name for p in run.iterdir()) == ["mine.txt"]


def test_eval_writes_its_own_file_and_refuses_to_overwrite_it(tmp_path, capsys):
    assert main(smoke_train(tmp_path)) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    metrics = (run / "metrics.json").read_bytes()
    args = ["eval", "--checkpoint", str(run), "--no-rerank"]
    assert main(args) == 0
    capsys.readouterr()
    record = read_json(run / "eval_test.json")
    assert (run / "metrics.json").read_bytes() == metrics
    assert record["k_test"] is None and record["protocol"]["split"] == "test" and record["checkpoint"]["step"] == 2
    assert record["checkpoint"]["manifest_sha256"] == sha256_file(run / "checkpoint" / MANIFEST_FILE)
    fails(capsys, args, "eval_test.json exists", "--overwrite")
    assert main([*args, "--overwrite"]) == 0


# ---------------------------------------------------------------------------- 4. bad output paths, up front


def test_bad_output_paths_are_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "a_file").write_text("x")
    fails(capsys, smoke_train(tmp_path, "a_file"), "is a file; a run needs a folder")
    fails(capsys, smoke_train(tmp_path, "a_file/run"), "cannot be created", "is a file, not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        fails(capsys, smoke_train(tmp_path, "locked/run"), "cannot be written", "read-only")
        fails(capsys, ["eval", "--checkpoint", str(tmp_path / "x"), "--out", str(locked / "e.json")],
              "is not a writable folder")
    assert no_training == [] and (tmp_path / "a_file").read_text() == "x"


# ------------------------------------------------------------------------------------------- 5. the store


def _store(path: Path, n: int = 2000) -> Path:
    with TeacherScoreStore(path, "fp", "ns") as store:
        store.put(torch.arange(n), torch.arange(n), torch.linspace(-3, 3, n), torch.linspace(0, 1, n))
    return path


def test_a_read_only_store_serves_lookups_and_refuses_writes_with_the_fix(tmp_path):
    path = _store(tmp_path / "ro" / "s.sqlite")
    for locked in (path, path.parent):  # the file read-only, then the folder too
        with read_only(locked):
            with TeacherScoreStore(path, "fp", "ns") as store:
                assert not store.writable and store.lookup(torch.arange(3), torch.arange(3))[0].all()
                with pytest.raises(StoreError, match=r"is read-only .* pass --store with a writable path"):
                    store.get_or_compute(torch.arange(5000), torch.arange(5000), lambda i, c: (i * 0.0, i * 0.0))
            with pytest.raises(StoreError, match="is read-only") as err:
                TeacherScoreStore(path, "another teacher", "ns")
            assert "not a teacher-score store" not in str(err.value)


def _garble(path: Path, first_page: int) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(4096 * first_page, len(data) - 4096, 4096 * 3):
        data[offset + 100 : offset + 400] = bytes(b ^ 0x5A for b in data[offset + 100 : offset + 400])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("first_page", [0, 2], ids=["schema", "rows"])
def test_a_garbled_store_is_one_line_naming_the_fix(tmp_path, first_page):
    path = _store(tmp_path / "s.sqlite", n=20000)
    _garble(path, first_page)
    damaged = r"is damaged \(SQLite: .*\): move it aside .*mv .*s\.sqlite"
    with pytest.raises(StoreError, match=damaged), TeacherScoreStore(path, "fp", "ns") as store:
        store.lookup(torch.arange(20000), torch.arange(20000))


def test_store_errors_through_the_cli(tmp_path, capsys, no_training):
    store = _store(tmp_path / "s.sqlite")
    args = ["train", *SMOKE, "--loss", "itc", "--loss", "cprd", "--steps", "2", "--no-rerank", "--store", str(store)]
    with read_only(store):
        fails(capsys, [*args, "--out", str(tmp_path / "a")], f"teacher-score store {store} is read-only",
              "--store")
    assert no_training == []
    _garble(store, 0)
    fails(capsys, [*args, "--out", str(tmp_path / "b")], f"teacher-score store {store} is damaged", "mv ")


# ------------------------------------------------------------------------------------ 6. silent mismatches


def test_duplicate_loss_names_are_an_error():
    with pytest.raises(ValueError, match=r"loss term names must be unique .* \['cprd'\]"):
        FitConfig(losses=(LossTerm("itc"), LossTerm("cprd", 1.0), LossTerm("cprd", 0.5, {"m": 2})))


def test_an_edited_config_json_is_refused(tmp_path, capsys):
    assert main(smoke_train(tmp_path)) == 0
    capsys.readouterr()
    ckpt = tmp_path / "run" / "checkpoint"
    meta = read_json(ckpt / CONFIG_FILE)
    meta["config"]["heads"] = 2 if meta["config"]["heads"] != 2 else 4  # same weight shapes, another model
    (ckpt / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    with pytest.raises(CheckpointError, match=r"config\.json is corrupt or was edited"):
        load_student(ckpt)
    fails(capsys, ["eval", "--checkpoint", str(tmp_path / "run"), "--no-rerank"], "config.json is corrupt or was "
          "edited")


def test_the_committed_teacher_is_covered_by_its_manifest():
    from workbench.experiments import DEFAULT_TEACHER
    from workbench.io import load_checkpoint, verify_manifest

    assert set(verify_manifest(DEFAULT_TEACHER)) == {CONFIG_FILE, WEIGHTS_FILE}
    assert load_checkpoint(DEFAULT_TEACHER, kind="teacher")[0]["manifest"]


# ------------------------------------------------------------------------------------------------ 8. smaller


def test_ctrl_c_saves_the_current_step_and_resume_continues_exactly(tmp_path, smoke_ws, uninterrupted):
    def ctrl_c_at_4(step: int, row: dict) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    torch.manual_seed(0)
    with pytest.raises(TrainingInterrupted) as stop:
        fit(kill_cfg(), smoke_ws.world, smoke_ws.new_student(), teacher_scores=smoke_ws.teacher_scores(),
            out_dir=tmp_path, step_callbacks=(ctrl_c_at_4,))
    assert stop.value.step == 4 and read_json(tmp_path / "checkpoint" / CONFIG_FILE)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is handler
    resumed = fit(kill_cfg(), smoke_ws.world, smoke_ws.new_student(), teacher_scores=smoke_ws.teacher_scores(),
                  out_dir=tmp_path, resume=True)
    history, weights = uninterrupted
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in history]
    assert all(torch.equal(a, b) for a, b in zip(resumed.student.state_dict().values(), weights, strict=True))


@pytest.mark.slow
def test_ctrl_c_in_the_cli_is_one_line_saying_how_to_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_DEBUG": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = ["train", *SMOKE, "--steps", "3000", "--eval-every", "1000", "--no-rerank", "--store", "s.sqlite",
            "--out", "run"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "workbench", *args], cwd=tmp_path, env=env, stderr=err,
                                stdout=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 240
        while "train:" not in log.read_text() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in log.read_text().replace("\r", "\n").splitlines() if line.startswith("workbench")]
    assert "Traceback" not in log.read_text() and len(lines) == 1, log.read_text()[-2000:]
    step = read_json(tmp_path / "run" / "checkpoint" / CONFIG_FILE)["step"]
    assert lines[0] == (f"workbench train: interrupted after step {step}; checkpoint saved in run/checkpoint; resume "
                        f"with: python -m workbench {' '.join(args)} --resume")
    assert 0 < step < 3000


def test_smaller_input_errors(tmp_path, capsys):
    fails(capsys, ["reproduce", "--profile", "smoke", "--workers", "0", "--out", str(tmp_path / "r")],
          "--workers must be >= 1, got 0")
    fails(capsys, ["demo", "--profile", "smoke", "--workers", "-2", "--out", str(tmp_path / "r")],
          "--workers must be >= 1, got -2")
    assert not (tmp_path / "r").exists()
    assert main(smoke_train(tmp_path)) == 0  # ITC alone: --k is not used, so it is not checked against the batch
    capsys.readouterr()
    fails(capsys, ["eval", "--checkpoint", str(tmp_path / "run"), "--k-test", "4"],
          "k_test must be >= 10 (the largest recall cut-off, R@10", "got 4")
    assert not (tmp_path / "run" / "eval_test.json").exists()
    fit_only = FitConfig(k=500, batch=32)
    assert fit_only.k == 500
