"""Writing files safely: atomic replacement, one writer per output, clear errors, no leftovers.

Every file stp writes (checkpoints, training states, packs, caches, metrics
CSVs) goes through ``atomic_write``: a temporary file beside the target, fsync,
``os.replace``. A crash leaves the old file or the new one, never half a file;
the temporary is removed on every error path, and ``remove_leftovers`` clears
those a ``kill -9`` left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save as serialize_tensors

from stpcli.errors import StpError

LOCK_SUFFIX = ".lock"


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def write_error(path: Path, exc: OSError) -> StpError:
    reason = exc.strerror or first_line(exc)
    return StpError(f"cannot write {path}: {reason}")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The file gets the permissions a plain ``open`` would give (the user's umask),
    not mkstemp's 0600. An OSError (read-only folder, full disk) becomes one
    clear StpError; the temporary file never survives.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path) -> None:
    """A safetensors file written through ``atomic_write``: serialised in memory, then written by
    Python, so a full disk is an OSError with its errno (safetensors' own writer has its own error type)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = serialize_tensors(contiguous, metadata=metadata)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, write: Callable) -> None:
    """``write(handle)`` fills a text file that replaces ``path`` atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        write(handle)


def remove_leftovers(path: Path) -> None:
    """Delete temporary files an interrupted atomic write of ``path`` left behind."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def create_out_dir(out_dir: Path) -> None:
    """The --out-dir of a multi-stage run, created if absent; a file there, or no right to create
    it, is one clear error."""
    if out_dir.exists() and not out_dir.is_dir():
        raise StpError(f"--out-dir {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StpError(f"cannot create --out-dir {out_dir}: {exc.strerror or exc}") from exc


def check_writable_folder(folder: Path) -> None:
    """Refuse a folder stp cannot create files in, before any work is done."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".stp-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StpError(f"cannot write to {folder}: {exc.strerror or first_line(exc)}") from exc


_HELD: dict[Path, int] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_output(path: Path) -> None:
    """Take the output ``path`` for this process (``<path>.lock``, created with O_EXCL).

    A second run writing the same output is refused at once. A lock whose
    process is gone (kill -9) is taken over. Released by ``release_outputs``,
    which the CLI calls on every exit path (and atexit calls for library users).
    """
    lock = path.with_name(path.name + LOCK_SUFFIX)
    if lock in _HELD or int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun rank 0 alone writes, so it alone holds the lock
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _pid_alive(owner):
                raise StpError(f"another stp run (pid {owner}) is writing {path}; wait for it to finish, "
                               f"or choose another --out") from None
            with contextlib.suppress(OSError):
                lock.unlink()  # stale: its process is gone
            continue
        except OSError as exc:
            raise StpError(f"cannot write to {path.parent}: {exc.strerror or first_line(exc)}") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        _HELD[lock] = os.getpid()
        return
    raise StpError(f"cannot take the lock {lock}; delete it if no stp run is writing {path}")


def release_outputs() -> None:
    for lock, pid in list(_HELD.items()):
        if pid == os.getpid():
            with contextlib.suppress(OSError):
                lock.unlink()
        del _HELD[lock]


atexit.register(release_outputs)
