"""Crash-safe writes: a failed or interrupted writer never leaves a part-written file."""

import numpy as np
import pytest

from effscale.fsutil import atomic_path, atomic_write_text


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a ne")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_writers_that_take_a_file_name_see_the_target_suffix(tmp_path):
    # np.savez appends ".npz" to any other name, and savefig picks its format from the
    # suffix: the temp path must end like the target, or the rename misses the file.
    target = tmp_path / "cache" / "images.npz"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == target.parent
        np.savez(tmp, x=np.arange(3))
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["images.npz"]


def test_two_writers_of_one_target_do_not_share_a_temp_file(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_bytes(b"a")
        second.write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the outer writer finished last
