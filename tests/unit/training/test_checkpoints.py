"""The atomic writers: a directory written through a staging copy gets the modes of any directory the process makes."""

import os
import stat

import pytest

from tf_ppo.training.checkpoints import atomic_directory


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_an_atomic_directory_follows_the_umask_as_mkdir_does(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "export") as staging:
            (staging / "saved_model.pb").write_text("x")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "export" / "saved_model.pb").stat().st_mode) == 0o666 & ~umask
