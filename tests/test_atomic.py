"""Crash-safe writes: nothing finished-looking unless the write completed."""

from __future__ import annotations

import pytest

from ftpack.core.atomic import (OUTPUT_MARK, atomic_dir, atomic_path, check_free_space, check_output_dir,
                                is_ftpack_output, remove_stale_partials, sha256_file, write_json)
from ftpack.core.errors import FtpackError


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "model.gguf"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"abc")
        assert not target.exists()
        assert ".partial-" in tmp.name
    assert target.read_bytes() == b"abc"
    assert list(target.parent.iterdir()) == [target]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new but broken")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    """An earlier ftpack output is replaced as a whole; a failed write leaves it as it was."""
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "stale.bin").write_text("stale")
    assert is_ftpack_output(target)
    with atomic_dir(target) as tmp:
        (tmp / "a.safetensors").write_text("A")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARK, "a.safetensors"]
    with pytest.raises(KeyError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("B")
            raise KeyError("x")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARK, "a.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_dir_never_deletes_a_folder_ftpack_did_not_write(tmp_path):
    """Defect: `ftpack merge -o ~/models` used to wipe ~/models. A non-empty folder without
    ftpack's marker is refused (exit code 2) and left exactly as it was."""
    users = tmp_path / "models"
    users.mkdir()
    (users / "precious.gguf").write_text("years of work")
    with pytest.raises(FtpackError) as err:
        with atomic_dir(users) as tmp:
            (tmp / "model.safetensors").write_text("new")
    assert err.value.code == 2 and "ftpack did not write" in err.value.message
    assert [p.name for p in users.iterdir()] == ["precious.gguf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no partial left behind
    (users / "precious.gguf").unlink()
    with atomic_dir(users) as tmp:  # an empty folder is fine
        (tmp / "x").write_text("x")
    assert (users / "x").read_text() == "x"


def test_atomic_dir_never_replaces_a_folder_holding_its_inputs(tmp_path):
    """Defect: `-o work` with the base inside `work` deleted the base. Even an ftpack
    output that holds an input is refused, overwrite or not."""
    work = tmp_path / "work"
    with atomic_dir(work) as tmp:
        (tmp / "base").mkdir()
    base = work / "base"
    for target in (work, base):
        with pytest.raises(FtpackError) as err:
            with atomic_dir(target, overwrite=True, inputs=[base]):
                pass
        assert err.value.code == 2 and "holds the input" in err.value.message
    assert base.is_dir()


def test_overwrite_false_keeps_an_earlier_ftpack_output(tmp_path):
    target = tmp_path / "merged"
    with atomic_dir(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(FtpackError) as err:
        with atomic_dir(target, overwrite=False):
            pass
    assert "--overwrite" in err.value.hint and (target / "v1").is_file()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FtpackError):
        check_output_dir(tmp_path / "a-file")


def test_atomic_dir_checks_again_before_replacing(tmp_path):
    """A folder that appears at the output path while the work runs is not deleted either."""
    target = tmp_path / "out"
    with pytest.raises(FtpackError):
        with atomic_dir(target) as tmp:
            (tmp / "new").write_text("new")
            target.mkdir()
            (target / "users-file").write_text("mine")
    assert [p.name for p in target.iterdir()] == ["users-file"]


def test_remove_stale_partials(tmp_path):
    (tmp_path / "a.gguf.partial-123").write_text("x")
    d = tmp_path / "adapter.partial-9"
    d.mkdir()
    (d / "w").write_text("y")
    (tmp_path / "keep.txt").write_text("z")
    removed = remove_stale_partials(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_write_json_and_sha(tmp_path):
    p = write_json(tmp_path / "m.json", {"ä": 1})
    assert p.read_text(encoding="utf-8").startswith('{\n  "ä": 1')
    import hashlib

    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_check_free_space_fails_early_with_amounts(tmp_path):
    with pytest.raises(FtpackError) as exc:
        check_free_space(tmp_path / "not" / "yet", 10**18, "the F16 GGUF")
    assert "the F16 GGUF" in exc.value.message and "needs" in exc.value.message and "free" in exc.value.message
    check_free_space(tmp_path, 1, "a byte")
