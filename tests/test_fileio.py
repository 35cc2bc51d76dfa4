import os

import pytest

from autotimm_stream.fileio import write_atomic, write_bytes_atomic


def test_write_bytes_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_bytes(b"old")
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_bytes(b"complete")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"complete"
    assert os.listdir(tmp_path) == ["report.md"]


def test_the_suffix_ends_the_temporary_name(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        with open(tmp, "wb") as fh:
            fh.write(b"x")

    write_atomic(tmp_path / "clip.mp4", write, suffix=".mp4")
    assert seen[0].endswith(".mp4") and seen[0] != str(tmp_path / "clip.mp4")
    assert (tmp_path / "clip.mp4").read_bytes() == b"x"
