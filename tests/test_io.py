"""Safe I/O: atomic writes (no temp files left, old content kept on failure), JSON, checksummed checkpoints that
are never loaded when corrupt, truncated, incomplete or of the wrong kind."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import io
from workbench.io import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    load_tensors,
    read_json,
    save_checkpoint,
    save_tensors,
    sha256_file,
    write_json,
)
from workbench.models.stem import StemConfig
from workbench.models.student import DualEncoder, StudentConfig
from workbench.models.teacher import CrossEncoder, TeacherConfig, load_teacher
from workbench.training.checkpoint import load_student

SMALL_STUDENT = StudentConfig(dim=16, embed_dim=8, heads=2, mlp=16, image_layers=1, text_layers=1,
                              stem=StemConfig(hidden=16, dim=8))
SMALL_TEACHER = TeacherConfig(dim=16, heads=2, mlp=16, text_layers=1, fusion_layers=1, embed_dim=8,
                              stem=StemConfig(hidden=16, dim=8))


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    w, mask = torch.randn(64, 32, generator=gen), torch.rand(5, generator=gen) > 0.5
    return {"w": w, "ids": torch.arange(10), "mask": mask}


@pytest.fixture
def student_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    student = DualEncoder(SMALL_STUDENT)
    return save_checkpoint(tmp_path / "student", "student", student.config_dict(), student.state_dict(), {"step": 3})


@pytest.fixture
def no_load(monkeypatch) -> list[str]:
    """Record every call to safetensors' loader: a rejected checkpoint must never reach it."""
    calls: list[str] = []
    real = io.load_file

    def spy(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io, "load_file", spy)
    return calls


# ------------------------------------------------------------------------------------------- atomic writes


def test_atomic_writes_leave_only_the_target(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    write_json(tmp_path / "c.json", {"x": 1})
    atomic_write_bytes(tmp_path / "a.bin", b"second")  # overwrite
    assert files(tmp_path) == ["a.bin", "b.txt", "c.json"]
    assert (tmp_path / "a.bin").read_bytes() == b"second" and (tmp_path / "b.txt").read_text("utf-8") == "héllo"
    atomic_write_text(tmp_path / "new" / "deep" / "d.txt", "x")  # parents are created
    assert (tmp_path / "new" / "deep" / "d.txt").read_text() == "x"


def test_atomic_write_keeps_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "p.txt", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.json"
    write_json(target, {"old": True})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"old": False})
    with pytest.raises(OSError, match="disk full"):
        save_tensors(tmp_path / "w.safetensors", tensors())
    monkeypatch.undo()
    assert files(tmp_path) == ["keep.json"] and read_json(target) == {"old": True}


def test_unserialisable_json_raises_and_writes_nothing(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, [1])
    with pytest.raises(TypeError, match="cannot serialise object"):
        write_json(target, {"bad": object()})
    assert files(tmp_path) == ["x.json"] and read_json(target) == [1]


def test_json_round_trip_converts_paths_tensors_and_numpy(tmp_path):
    path = write_json(tmp_path / "x.json", {"p": Path("/a/b"), "t": torch.tensor([1.5, 2.0]), "n": np.float32(0.5),
                                            "a": np.arange(3), "s": torch.tensor(7)})
    assert read_json(path) == {"p": "/a/b", "t": [1.5, 2.0], "n": 0.5, "a": [0, 1, 2], "s": 7}


def test_read_json_errors_name_what_and_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run config not found: .*missing\.json"):
        read_json(tmp_path / "missing.json", what="run config")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run config at .*bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json", what="run config")


# ------------------------------------------------------------------------------------------------- tensors


def test_tensors_round_trip_with_checksum(tmp_path):
    path = tmp_path / "w.safetensors"
    digest = save_tensors(path, tensors())
    assert digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_tensors(path, sha256=digest)
    assert loaded.keys() == tensors().keys() and all(torch.equal(loaded[k], v) for k, v in tensors().items())
    assert files(tmp_path) == ["w.safetensors"]


def test_truncated_or_garbage_tensor_files_are_rejected(tmp_path, no_load):
    path = tmp_path / "w.safetensors"
    digest = save_tensors(path, tensors())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="is corrupt: its SHA-256 does not match"):
        load_tensors(path, sha256=digest)
    assert no_load == []
    with pytest.raises(CheckpointError, match="is unreadable"):  # no checksum to compare: the reader must refuse
        load_tensors(path)
    path.write_bytes(b"\xff" * 40)
    with pytest.raises(CheckpointError, match="is unreadable"):
        load_tensors(path)
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_tensors(tmp_path / "none.safetensors")


# --------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", "student", {"dim": 4}, tensors(), {"step": 12, "note": "x"})
    assert files(folder) == [CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE]
    meta, state = load_checkpoint(folder, kind="student")
    assert meta["kind"] == "student" and meta["config"] == {"dim": 4} and meta["step"] == 12 and meta["note"] == "x"
    assert meta["sha256"] == sha256_file(folder / WEIGHTS_FILE) and "workbench_version" in meta
    assert meta["manifest"] == {name: sha256_file(folder / name) for name in (CONFIG_FILE, WEIGHTS_FILE)}
    assert all(torch.equal(state[k], v) for k, v in tensors().items())
    assert load_checkpoint(folder)[0] == meta  # kind not checked when not asked


def test_student_round_trip(student_folder):
    torch.manual_seed(0)
    original = DualEncoder(SMALL_STUDENT).eval()
    loaded = load_student(student_folder)
    assert loaded.config == SMALL_STUDENT and not loaded.training
    tokens = torch.tensor([[1, 4, 10, 20, 0, 0]])
    images = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(loaded.encode_text(tokens), original.encode_text(tokens))
    torch.testing.assert_close(loaded.encode_image(images), original.encode_image(images))


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle", "header"])
def test_flipped_byte_is_detected_and_never_loaded(student_folder, no_load, where):
    _flip_byte(student_folder / WEIGHTS_FILE, None if where == "middle" else 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt or was edited: its SHA-256 does not"):
        load_student(student_folder)
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(student_folder)
    assert no_load == []


def test_truncated_checkpoint_is_never_loaded(student_folder, no_load):
    path = student_folder / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_student(student_folder)
    assert no_load == []


def _legacy(folder: Path) -> Path:
    """Turn a checkpoint into the format written before manifests (config.json covers the weights only)."""
    (folder / MANIFEST_FILE).unlink()
    meta = json.loads((folder / CONFIG_FILE).read_text())
    del meta["format_version"]
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    return folder


MANIFEST_MISMATCH = r"config\.json is corrupt or was edited: its SHA-256 does not match the one recorded in manifest"


@pytest.mark.parametrize(
    "damage, message, legacy_message",
    [
        ("no_config", r"incomplete: config\.json \(listed in manifest\.json\) is missing",
         r"checkpoint config not found: .*config\.json"),
        ("bad_config", MANIFEST_MISMATCH, r"checkpoint config at .*config\.json is not valid JSON"),
        ("config_without_sha", MANIFEST_MISMATCH, r"lacks the keys kind/config/sha256"),
        ("config_is_a_list", MANIFEST_MISMATCH, r"lacks the keys kind/config/sha256"),
        ("no_weights", r"incomplete: model\.safetensors \(listed in manifest\.json\) is missing",
         r"weights file not found: .*model\.safetensors"),
        ("no_folder", r"checkpoint folder not found: .*student", r"checkpoint folder not found: .*student"),
    ],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["manifest", "legacy"])
def test_incomplete_checkpoints_get_clear_errors(student_folder, no_load, damage, message, legacy_message, legacy):
    if legacy:
        _legacy(student_folder)
        message = legacy_message
    config = student_folder / CONFIG_FILE
    if damage == "no_config":
        config.unlink()
    elif damage == "bad_config":
        config.write_text(config.read_text()[:-20])
    elif damage == "config_without_sha":
        meta = json.loads(config.read_text())
        del meta["sha256"]
        config.write_text(json.dumps(meta))
    elif damage == "config_is_a_list":
        config.write_text("[]")
    elif damage == "no_weights":
        (student_folder / WEIGHTS_FILE).unlink()
    else:
        for p in student_folder.iterdir():
            p.unlink()
        student_folder.rmdir()
    with pytest.raises(CheckpointError, match=message):
        load_student(student_folder)
    assert no_load == []


def test_wrong_kind_is_a_clear_error(tmp_path, student_folder, no_load):
    teacher = CrossEncoder(SMALL_TEACHER)
    teacher_folder = save_checkpoint(tmp_path / "teacher", "teacher", teacher.config_dict(), teacher.state_dict())
    with pytest.raises(CheckpointError, match=r"holds a 'teacher' model, expected a 'student' model"):
        load_student(teacher_folder)
    with pytest.raises(CheckpointError, match=r"holds a 'student' model, expected a 'teacher' model"):
        load_teacher(student_folder)
    assert no_load == []
    assert isinstance(load_teacher(teacher_folder), CrossEncoder)


def test_weights_that_do_not_fit_the_recorded_config_are_rejected(tmp_path):
    student = DualEncoder(SMALL_STUDENT)
    bigger = replace(SMALL_STUDENT, dim=32)
    folder = save_checkpoint(tmp_path / "s", "student", asdict(bigger), student.state_dict())
    with pytest.raises(CheckpointError, match="does not fit a student of its recorded config"):
        load_student(folder)
    teacher = CrossEncoder(SMALL_TEACHER)
    state = teacher.state_dict()
    del state["itm_head.3.bias"]
    folder = save_checkpoint(tmp_path / "t", "teacher", teacher.config_dict(), state)
    with pytest.raises(CheckpointError, match="does not fit a teacher of its recorded config"):
        load_teacher(folder)

