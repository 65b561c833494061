"""The command line end to end: train a tiny teacher, train a CPRD student with it, re-evaluate the run (through
``python -m workbench`` in subprocesses, as a user runs it), and bad input answered with exit code 2 and a message
naming the problem, never a traceback (in-process through ``workbench.cli.main``, plus one real subprocess)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.experiments import DEFAULT_TEACHER, WORLD_PRESETS
from workbench.io import WEIGHTS_FILE, read_json, save_checkpoint, sha256_file, write_json
from workbench.models.stem import StemConfig
from workbench.models.student import DualEncoder, StudentConfig
from workbench.models.teacher import load_teacher
from workbench.training.checkpoint import TRAINER_FILE, load_student

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--world", "smoke"]


def run_workbench(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m workbench ARGS`` in a fresh process with one OpenMP thread; the checkout comes first on the path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_DEBUG": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """train-teacher -> train (itc + cprd) -> eval, in a temp folder; metrics.json is read before eval runs."""
    root = tmp_path_factory.mktemp("cli")
    out = {"root": root}
    out["teacher_proc"] = run_workbench("train-teacher", *SMOKE, "--steps-binding", "20", "--steps-full", "20",
                                        "--eval-every", "20", "--out", "teacher", cwd=root)
    check_ok(out["teacher_proc"])
    out["train_proc"] = run_workbench("train", *SMOKE, "--profile", "smoke", "--teacher", "teacher", "--store",
                                      "s.sqlite", "--loss", "itc", "--loss", "cprd:weight=1.0,validity=top,m=2",
                                      "--out", "run", cwd=root)
    check_ok(out["train_proc"])
    out["train_metrics"] = read_json(root / "run" / "metrics.json")
    out["eval_proc"] = run_workbench("eval", "--checkpoint", "run", "--teacher", "teacher", "--store", "s.sqlite",
                                     cwd=root)
    check_ok(out["eval_proc"])
    return out


@pytest.mark.slow
def test_train_teacher_writes_a_loadable_teacher(smoke):
    folder = smoke["root"] / "teacher"
    assert {"config.json", "model.safetensors", "history.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
    meta = read_json(folder / "config.json")
    assert meta["kind"] == "teacher" and meta["world"] == asdict(WORLD_PRESETS["smoke"])
    assert meta["training"]["steps_binding"] == 20 and meta["training"]["steps_full"] == 20
    history = read_json(folder / "history.json")
    assert [row["step"] for row in history] == [20, 40]
    assert all(finite(row["itm_loss"]) for row in history)
    metrics = read_json(folder / "metrics.json")
    assert all(finite(v) for v in metrics["test"]["minimal_pairs"].values())
    teacher = load_teacher(folder)
    tokens = torch.tensor([[1, 4, 5, 6, 0], [1, 4, 7, 8, 0]])
    assert torch.isfinite(teacher.score(torch.rand(2, 3, 24, 24), tokens)).all()


@pytest.mark.slow
def test_train_writes_config_history_metrics_and_checkpoint(smoke):
    run = smoke["root"] / "run"
    config = read_json(run / "config.json")
    assert [t["name"] for t in config["fit"]["losses"]] == ["itc", "cprd"]
    assert config["fit"]["losses"][1] == {"name": "cprd", "weight": 1.0, "params": {"validity": "top", "m": 2}}
    assert config["fit"]["steps"] == 30 and config["data"]["world"] == asdict(WORLD_PRESETS["smoke"])
    history = read_json(run / "history.json")
    assert [row["step"] for row in history] == [15, 30]
    for row in history:
        assert all(finite(row[k]) for k in ("itc_loss", "cprd_loss", "loss"))
        assert row["loss"] == pytest.approx(row["itc_loss"] + row["cprd_loss"], rel=1e-4)
    metrics = smoke["train_metrics"]
    assert finite(metrics["rsum"]) and metrics["rsum"] == metrics["retrieval"]["semantic"]["rsum"]
    assert 0 <= metrics["rsum"] <= 600 and finite(metrics["rerank"]["semantic"]["rsum"])
    assert metrics["teacher_store"]  # the teacher was consulted through the store
    assert (smoke["root"] / "s.sqlite").is_file()
    ckpt = run / "checkpoint"
    assert {"config.json", WEIGHTS_FILE, TRAINER_FILE} <= {p.name for p in ckpt.iterdir()}
    assert read_json(ckpt / "config.json")["step"] == 30
    assert isinstance(load_student(ckpt), DualEncoder)
    assert "retrieval semantic" in smoke["train_proc"].stdout


@pytest.mark.slow
def test_eval_reproduces_the_run_metrics_in_its_own_file(smoke):
    run = smoke["root"] / "run"
    assert read_json(run / "metrics.json") == smoke["train_metrics"]  # the training metrics are left alone
    again = read_json(run / "eval_test.json")
    for protocol, values in smoke["train_metrics"]["retrieval"].items():
        assert again["retrieval"][protocol] == pytest.approx(values)
    assert again["rsum"] == pytest.approx(smoke["train_metrics"]["rsum"])
    assert again["k_test"] == 16 and again["protocol"]["k_test"] == 16 and again["split"] == "test"
    assert again["checkpoint"]["step"] == 30
    assert again["checkpoint"]["weights_sha256"] == sha256_file(run / "checkpoint" / WEIGHTS_FILE)
    assert again["checkpoint"]["manifest_sha256"] == sha256_file(run / "checkpoint" / "manifest.json")
    assert "retrieval semantic" in smoke["eval_proc"].stdout


# -------------------------------------------------------------------------------------------------- bad input


def fails(capsys, argv: list[str], *phrases: str) -> str:
    """Run the CLI in-process; it must exit 2 with one error line naming the problem and no traceback."""
    try:
        rc = main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A run folder holding an (untrained) small student checkpoint on the smoke world."""
    cfg = StudentConfig(dim=16, embed_dim=8, heads=2, mlp=16, image_layers=1, text_layers=1, max_words=24,
                        stem=StemConfig(hidden=16, dim=8))
    student = DualEncoder(cfg)
    save_checkpoint(tmp_path / "run" / "checkpoint", "student", student.config_dict(), student.state_dict())
    write_json(tmp_path / "run" / "config.json", {"world": asdict(WORLD_PRESETS["smoke"])})
    return tmp_path / "run"


def train_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", *SMOKE, "--profile", "smoke", "--store", str(tmp_path / "s.sqlite"), "--out",
            str(tmp_path / "out"), *extra]


@pytest.mark.parametrize(
    "extra, phrases",
    [
        (["--loss", "nope"], ["unknown loss 'nope'", "registered losses", "cprd"]),
        (["--loss", "itc", "--loss", "cprd:foo=1"], ["loss 'cprd' got unknown hyperparameter(s) ['foo']", "valid:"]),
        (["--loss", "cprd:validity=sometimes"], ["validity", "'sometimes'"]),
        (["--loss", "cprd:weight=-1"], ["weight of loss 'cprd' must be >= 0.0, got -1.0"]),
        (["--loss", "cprd:m"], ["expected key=value pairs after ':'", "'m'"]),
        (["--k", "-1"], ["k must be >= 1, got -1"]),
        (["--loss", "itc", "--loss", "cprd", "--k", "32"], ["k=32 must be smaller than the batch (32)"]),
        (["--loss", "itc", "--loss", "cprd:weight=1", "--loss", "cprd:weight=2"],
         ["loss term names must be unique", "['cprd']"]),
        (["--steps", "0"], ["steps must be >= 1, got 0"]),
        (["--pool", "everywhere"], ["pool must be one of", "'everywhere'"]),
        (["--world-seed", "-1"], ["seed must be >= 0, got -1"]),
        (["--world", "huge"], ["argument --world: invalid choice: 'huge'"]),
        (["--k", "two"], ["argument --k: invalid int value: 'two'"]),
    ],
)
def test_train_rejects_bad_input_before_writing_anything(capsys, tmp_path, extra, phrases):
    fails(capsys, train_args(tmp_path, *extra), *phrases)
    assert not (tmp_path / "out").exists()


def test_train_without_a_teacher_folder(capsys, tmp_path):
    missing = tmp_path / "no_teacher"
    fails(capsys, train_args(tmp_path, "--teacher", str(missing), "--loss", "itc", "--loss", "cprd"),
          f"no teacher checkpoint in {missing}", "train-teacher")
    assert not (tmp_path / "out").exists()


def test_train_with_a_corrupt_teacher_never_loads_it(capsys, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(DEFAULT_TEACHER, teacher)
    data = bytearray((teacher / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x10
    (teacher / WEIGHTS_FILE).write_bytes(bytes(data))
    fails(capsys, train_args(tmp_path, "--teacher", str(teacher), "--loss", "itc", "--loss", "cprd"),
          f"{teacher / WEIGHTS_FILE} is corrupt", "SHA-256")
    assert not (tmp_path / "out").exists()


def test_eval_rejects_corrupt_missing_and_wrong_kind_checkpoints(capsys, tmp_path, tiny_run):
    weights = tiny_run / "checkpoint" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    fails(capsys, ["eval", "--checkpoint", str(tiny_run)], "is corrupt or was edited: its SHA-256 does not match")
    assert not (tiny_run / "metrics.json").exists()
    fails(capsys, ["eval", "--checkpoint", str(tmp_path / "nowhere")], "checkpoint folder not found")
    fails(capsys, ["eval", "--checkpoint", str(DEFAULT_TEACHER)], "holds a 'teacher' model, expected a 'student' model")
    (tiny_run / "checkpoint" / "config.json").unlink()
    fails(capsys, ["eval", "--checkpoint", str(tiny_run)], "is incomplete: config.json (listed in manifest.json) is "
          "missing")


def test_k_larger_than_the_gallery(capsys, tmp_path, tiny_run):
    store = str(tmp_path / "s.sqlite")
    fails(capsys, ["eval", "--checkpoint", str(tiny_run), "--store", store, "--k-test", "100000"],
          "k_test must be <= 200, got 100000")  # an explicit k_test is never clamped
    fails(capsys, ["eval", "--checkpoint", str(tiny_run), "--store", store, "--k-test", "-1"],
          "k_test must be >= 1, got -1")
    fails(capsys, ["teacher-scores", "--checkpoint", str(tiny_run), "--store", store, "--split", "val", "--top",
                   "100000"], "k=100000 must be smaller than the number of candidates")
    assert not (tiny_run / "metrics.json").exists()


@pytest.mark.slow
def test_train_with_k_larger_than_the_gallery(capsys, tmp_path):
    fails(capsys, train_args(tmp_path, "--loss", "itc", "--loss", "cprd", "--pool", "gallery", "--k", "500",
                             "--steps", "1"), "k=500 must be smaller than the number of candidates (400)")


@pytest.mark.parametrize(
    "extra, phrase",
    [(["--steps-binding", "-1"], "steps_binding must be >= 0, got -1"),
     (["--flip-share", "2"], "flip_share must be <= 1.0, got 2.0"),
     (["--batch", "1"], "batch must be >= 2, got 1")],
)
def test_train_teacher_rejects_bad_config(capsys, tmp_path, extra, phrase):
    fails(capsys, ["train-teacher", *SMOKE, "--out", str(tmp_path / "t"), *extra], phrase)
    assert not (tmp_path / "t").exists()


def test_real_entry_point_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = run_workbench("train", *SMOKE, "--loss", "itc", "--loss", "cprd:foo=1", "--out", "x", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbench train: error: loss 'cprd' got unknown hyperparameter")
    assert not (tmp_path / "x").exists()


def test_reproduce_rejects_a_seed_count_below_one(capsys, tmp_path):
    fails(capsys, ["reproduce", "--profile", "smoke", "--out", str(tmp_path / "r"), "--seeds", "0"],
          "--seeds must be >= 1, got 0")
    assert not (tmp_path / "r").exists()
