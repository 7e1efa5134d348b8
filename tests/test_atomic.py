"""Atomic writes: a failure mid-write leaves the previous file or folder intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_ml.atomic import atomic_write_bytes, atomic_write_dir, atomic_write_with


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.vw"
    atomic_write_bytes(target, b"old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.vw"], "no temp file is left behind"


def test_failed_folder_write_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "policy"
    atomic_write_dir(target, lambda d: (d / "a").write_text("v1"))

    def crash(d: Path) -> None:
        (d / "a").write_text("v2-partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, crash)
    assert (target / "a").read_text() == "v1"
    atomic_write_dir(target, lambda d: (d / "a").write_text("v2"))
    assert (target / "a").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
