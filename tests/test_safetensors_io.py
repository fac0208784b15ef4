"""The streaming safetensors writer: the same bytes as the safetensors library, and a file
under its real name only when every planned tensor is in."""

from __future__ import annotations

import numpy as np
import pytest

from ftpack.gguf.safetensors_io import SafetensorsWriter, TensorSource, safetensors_order


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "z.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "a.weight": rng.standard_normal((4,)).astype(np.float16),
        "m.ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "b.mask": np.array([True, False, True]),
        "c.f64": rng.standard_normal(2),
        "d.i8": np.array([-1, 2], dtype=np.int8),
        "e.u8": np.array([7], dtype=np.uint8),
        "f.i32": np.array([1, 2, 3], dtype=np.int32),
        "g.scalar": np.array(1.5, dtype=np.float32),
        "h.empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_writer_matches_the_safetensors_library_byte_for_byte(tmp_path):
    """Same header order (dtype, then name) and layout: a .bin converted by ftpack is
    indistinguishable from one saved by safetensors, so later GGUFs are identical too."""
    from safetensors.numpy import save_file

    tensors = _tensors()
    dtype_of = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.bool_: "BOOL", np.float64: "F64",
                np.int8: "I8", np.uint8: "U8", np.int32: "I32"}
    plan = safetensors_order([(n, dtype_of[t.dtype.type], t.shape) for n, t in tensors.items()])
    with SafetensorsWriter(tmp_path / "ours.safetensors", plan, {"format": "pt"}) as writer:
        for name, _, _ in plan:
            writer.write(name, tensors[name])
    save_file(tensors, tmp_path / "theirs.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()
    source = TensorSource(tmp_path, [tmp_path / "ours.safetensors"])
    for name, t in tensors.items():
        assert np.array_equal(source.read_raw(name), t)


def test_writer_guards_its_own_state(tmp_path):
    plan = [("a", "F32", (2,)), ("b", "F32", (3,))]
    path = tmp_path / "x.safetensors"
    writer = SafetensorsWriter(path, plan)
    with pytest.raises(ValueError, match="expects a next"):
        writer.write("b", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="bytes"):
        writer.write("a", np.zeros(3, np.float32))
    writer.write("a", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="not every planned tensor"):
        writer.close()
    assert writer.closed and list(tmp_path.iterdir()) == []  # no file, no partial
    with pytest.raises(ValueError, match="closed"):
        writer.write("b", np.zeros(3, np.float32))

    with pytest.raises(KeyError):
        with SafetensorsWriter(path, plan) as w:
            w.write("a", np.zeros(2, np.float32))
            raise KeyError("interrupted")
    assert list(tmp_path.iterdir()) == []

    with SafetensorsWriter(path, plan) as w:
        w.write("a", np.ones(2, np.float32))
        assert not path.exists()  # the real name appears only when complete
        w.write("b", np.ones(3, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]
