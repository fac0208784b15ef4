"""Crash-safe writes: nothing finished-looking unless the write completed."""

from __future__ import annotations

import pytest

from ftpack.core.atomic import (atomic_dir, atomic_path, check_free_space, remove_stale_partials,
                           sha256_file, write_json)
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
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "stale.bin").write_text("stale")
    with atomic_dir(target) as tmp:
        (tmp / "a.safetensors").write_text("A")
    assert sorted(p.name for p in target.iterdir()) == ["a.safetensors"]
    with pytest.raises(KeyError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("B")
            raise KeyError("x")
    assert sorted(p.name for p in target.iterdir()) == ["a.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


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
