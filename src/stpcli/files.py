"""Writing files safely: atomic replacement, one writer per output, clear errors, no leftovers.

Every file stp writes (checkpoints, training states, packs, caches, metrics
CSVs, plots, exports) goes through ``atomic_write``: a temporary file beside the
target, fsync, ``os.replace``; ``check_output`` is the one rule for where a
command may write. A crash leaves the old file or the new one, never half a file;
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from stpcli.errors import StpError
from stpcli.launch import read_launch
from stpcli.names import lock_path

if TYPE_CHECKING:
    import torch



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


MAX_TEXT_FILE = 10 << 20  # bytes of a preset or split list read before anything else is done


def readable_file(path: str | Path, what: str = "", max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular, readable file (of at most ``max_bytes``); otherwise one error that
    says what it is instead: missing, a folder, a FIFO or device, unreadable, too large."""
    path = Path(path)
    label = f"{what} {path}".strip()
    if not path.exists():
        raise StpError(f"{label} does not exist")
    if path.is_dir():
        raise StpError(f"{label} is a folder, not a file")
    if not path.is_file():
        raise StpError(f"{label} is not a regular file (a FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise StpError(f"{label} is not readable")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise StpError(f"{label} is {path.stat().st_size / 2**20:.1f} MiB; at most {max_bytes / 2**20:g} MiB is read")
    return path


def write_error(path: Path, exc: OSError) -> StpError:
    reason = exc.strerror or first_line(exc)
    return StpError(f"cannot write {path}: {reason}")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_write(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The file gets the permissions a plain ``open`` would give (the user's umask),
    not mkstemp's 0600. An OSError (read-only folder, full disk) becomes one
    clear StpError; the temporary file never survives. ``durable=False`` skips the fsync, for
    files that are rebuilt when torn (the decode cache).
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
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` written by Python through ``atomic_write``. Every writer that is not Python's own
    (safetensors, h5py for NIR, the ONNX exporter, matplotlib) serialises into memory first and
    hands its bytes here, so a full disk is an OSError with its errno and one line, never a
    library's own failure mode (h5py crashes the process on a full file system)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path) -> None:
    """A safetensors file, serialised in memory and written by ``atomic_write_bytes``."""
    from safetensors.torch import save as serialize_tensors

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, serialize_tensors(contiguous, metadata=metadata))


def atomic_write_text(path: str | Path, write: Callable) -> None:
    """``write(handle)`` fills a text file that replaces ``path`` atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        write(handle)


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same resolved path, or the same inode (a hard link)."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | Path, force: bool, inputs: Iterable[Path | None] = (),
                 suffix: str | None = None, option: str = "--out") -> Path:
    """The rule for every file a command writes, checkpoints and side outputs alike (CSV, JSON,
    plots, exports), checked before any work is done: never one of the command's inputs (by
    resolved path or inode, even with --force), never an existing file without --force, never
    something that is not a regular file (a folder, /dev/null, a FIFO); a missing folder is
    created (and removed again if the command fails before writing into it)."""
    out = Path(path).expanduser()
    if suffix is not None and out.suffix != suffix:
        raise StpError(f"{option} {out} must end in {suffix}")
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise StpError(f"{option} {out} exists and is not a regular file; choose a file name")
        for source in inputs:
            if source is not None and _same_file(out, Path(source)):
                raise StpError(f"{option} {out} is this command's input; an input is never overwritten, "
                               f"choose another {option}")
        if not force:
            raise StpError(f"{option} {out} exists; pass --force to overwrite it")
    create_folder(out.parent, option)
    check_writable_folder(out.parent)
    return out


_CREATED_FOLDERS: list[Path] = []


def create_folder(folder: Path, option: str) -> None:
    """``folder`` and its missing parents, created for an output; a file in the way is one error.
    Folders created this way are remembered, so that a command that fails removes them again."""
    if folder.is_dir():
        return
    missing = [folder, *(p for p in folder.parents if not p.exists())]
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise StpError(f"{option}: {part} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StpError(f"{option}: cannot create folder {folder}: {exc.strerror or first_line(exc)}") from exc
    _CREATED_FOLDERS.extend(p for p in sorted(set(missing), key=lambda p: -len(p.parts)) if p not in _CREATED_FOLDERS)


def finish_outputs(succeeded: bool) -> None:
    """Release this process's output locks; after a failure, also remove the (still empty)
    folders created for outputs, so a refused or failed command leaves nothing behind."""
    release_outputs()
    created = sorted(_CREATED_FOLDERS, key=lambda p: -len(p.parts))
    _CREATED_FOLDERS.clear()
    if not succeeded:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def remove_leftovers(path: Path) -> None:
    """Delete temporary files an interrupted atomic write of ``path`` left behind."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def create_out_dir(out_dir: Path) -> None:
    """The --out-dir of a multi-stage run, created if absent (and removed again, while empty, if the
    command fails); a file there, or no right to create it, is one clear error."""
    if out_dir.exists() and not out_dir.is_dir():
        raise StpError(f"--out-dir {out_dir} is a file, not a folder")
    create_folder(out_dir, "--out-dir")


def check_writable_folder(folder: Path) -> None:
    """Refuse a folder stp cannot create files in, before any work is done."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".stp-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StpError(f"cannot write to {folder}: {exc.strerror or first_line(exc)}") from exc


_HELD: dict[Path, int] = {}


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), so a lock whose pid was
    reused by another process is known to be stale; None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(path: Path) -> int | None:
    """The pid of the live process that holds ``path``'s lock, or None (no lock, or a stale one:
    its process is gone, or its pid now belongs to a process that started later)."""
    try:
        fields = lock_path(path).read_text().split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid == os.getpid() or not _pid_alive(pid):
        return None
    started = _start_time(pid)
    if len(fields) > 1 and started is not None and started != fields[1]:
        return None  # the pid was reused
    return pid


def clear_stale(path: Path) -> None:
    """Remove what a killed writer of ``path`` left: its stale lock and its temporaries. Nothing
    is touched while a live process holds the lock."""
    if lock_holder(path) is not None:
        return
    with contextlib.suppress(OSError):
        lock_path(path).unlink()
    remove_leftovers(path)


def lock_output(path: Path) -> None:
    """Take the output ``path`` for this process (``<path>.lock``, created with O_EXCL, holding the
    pid and its start time).

    A second run writing the same output is refused at once. A lock whose
    process is gone (kill -9), or whose pid was reused, is taken over. Released by
    ``release_outputs``, which the CLI calls on every exit path (and atexit calls for library users).
    """
    lock = lock_path(path)
    if lock in _HELD or read_launch().rank != 0:
        return  # under torchrun rank 0 alone writes, so it alone holds the lock
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock_holder(path)
            if owner is not None:
                raise StpError(f"another stp run (pid {owner}) is writing {path} (lock file {lock}); wait for it "
                               "to finish or choose another output; delete the lock file if that process is not stp") from None
            with contextlib.suppress(OSError):
                lock.unlink()  # stale: its process is gone
            continue
        except OSError as exc:
            raise StpError(f"cannot write to {path.parent}: {exc.strerror or first_line(exc)}") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {_start_time(os.getpid()) or ''}".strip())
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
