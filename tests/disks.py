"""A small filesystem that a test can fill: a tmpfs of its own, mounted for the test.

Mounting needs root (CI runs as root). Where it cannot be done the tests that need it
skip with the reason, and fail in CI (CI=true), where the mechanism must be there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a `size` tmpfs at `where` (made here) for the duration."""
    where.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
    )
    if done.returncode:
        reason = f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"disk-full tests cannot run in CI: {reason}")
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; the filler file, to delete to free the space."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):  # big writes, then what is left, to the byte
            refused: OSError | None = None
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                refused = exc
            assert refused is not None
            assert refused.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler
