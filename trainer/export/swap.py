"""Replace a folder by a freshly built one so that a reader sees the old folder or the new one, never a mix.

The new folder is built in a temporary folder beside the destination (same filesystem, so a rename moves it).
On Linux the two are exchanged in one step (renameat2 RENAME_EXCHANGE); elsewhere the old folder is renamed
aside, the new one renamed in, and the old one put back if that fails. A process killed while building leaves
only its temporary folder, which the next export into the same place removes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def temp_prefix(out_dir: Path) -> str:
    """The name every temporary folder of an export into out_dir starts with."""
    return f".{out_dir.name}.export-"


def make_temp(out_dir: Path) -> Path:
    """A new empty folder beside out_dir, named after it and this process id."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f"{temp_prefix(out_dir)}{os.getpid()}-"))
    umask = os.umask(0o022)
    os.umask(umask)
    path.chmod(0o777 & ~umask)  # mkdtemp makes it private; the model folder should be like any other folder
    return path


def remove_stale_temps(out_dir: Path) -> None:
    """Delete the temporary folders that killed exports into out_dir left behind (their process is gone)."""
    if not out_dir.parent.is_dir():
        return
    for path in out_dir.parent.glob(f"{temp_prefix(out_dir)}*"):
        pid = path.name.removeprefix(temp_prefix(out_dir)).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted export", path)
            shutil.rmtree(path, ignore_errors=True)


def swap_into_place(new: Path, out_dir: Path) -> None:
    """Put folder `new` at out_dir. A previous out_dir ends up at `new` (the caller deletes it) or is gone."""
    if not out_dir.exists():
        os.rename(new, out_dir)
        return
    if _exchange(new, out_dir):
        return
    aside = new.with_name(new.name + ".old")
    os.rename(out_dir, aside)
    try:
        os.rename(new, out_dir)
    except BaseException:
        os.rename(aside, out_dir)
        raise
    os.rename(aside, new)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False when this system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
