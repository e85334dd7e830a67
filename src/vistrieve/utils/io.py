"""Atomic, pickle-free persistence helpers.

Every file vistrieve saves goes through these functions: data is written to a temporary
file in the destination directory, flushed to disk, then renamed over the destination, so
a crash never leaves a half-written file under the final name. Whole directories (indexes,
checkpoints) are assembled in a temporary sibling directory and swapped in so that at every
instant the path holds the old or the new directory (see :func:`atomic_directory`), and
manifests record each data file's size and SHA-256 (:func:`file_record`,
:func:`check_files`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vistrieve.errors import IntegrityError, OverwriteRefusedError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> None:
    """Call ``writer(tmp_path)`` to write a temporary file, then rename it to ``path``.

    Args:
        path: Final destination.
        writer: Writes the full content to the path it is given.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        # mkstemp creates 0600 files (and some writers, safetensors among them, replace the
        # file they are given); give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` (never pickled) to ``path`` atomically."""

    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)

    atomic_write(path, _write)


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a ``.npy`` file without pickle, with a clear error for missing or truncated files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"missing array file {p}")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read array file {p}: it is truncated or corrupt ({exc})") from exc


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for every non-blank line of a JSONL file.

    Raises:
        ValueError: a line is not JSON (the file and line are named).
    """
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file with clear errors for missing and malformed files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"missing file {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON (truncated or corrupt?): {exc}") from exc


# ------------------------------------------------------------------ directory swaps
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two existing paths (``renameat2(RENAME_EXCHANGE)``).

    Returns False where the platform or the filesystem cannot (the caller then falls back
    to two renames under a journal).
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _journal_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.swap.json")


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Finish or roll back a directory swap that a crash interrupted.

    :func:`atomic_directory` writes a journal beside the destination before it moves
    anything. When the journal is still there, the destination either holds a complete
    directory (the swap finished, or had not started: the leftover sibling is removed) or
    is missing (the crash came between the two renames): then the new directory, complete
    before the journal was written, is moved in, or, when it is gone, the old one is moved
    back. Loaders call this before reading, so an interrupted save never loses the index.
    """
    dest = Path(path)
    journal = _journal_path(dest)
    if not journal.is_file():
        return
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        new = dest.with_name(str(record["new"]))
        old = dest.with_name(str(record["old"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"{journal} records an interrupted replacement of {dest} but cannot be read "
            f"({exc}); look for the hidden .{dest.name}.* folders beside it and restore the "
            "right one",
            journal,
        ) from exc
    if new.parent != dest.parent or old.parent != dest.parent:
        raise IntegrityError(f"{journal} names folders outside {dest.parent}", journal)
    if not dest.exists():
        source = new if new.is_dir() else old if old.is_dir() else None
        if source is None:
            raise IntegrityError(
                f"{dest} is missing and the interrupted replacement recorded in {journal} "
                "left neither the old nor the new folder: restore it from a backup or rebuild",
                dest,
            )
        _rename(source, dest)
        logger.warning(
            "%s: %s an interrupted replacement",
            dest,
            "finished" if source == new else "rolled back",
        )
    for leftover in {new, old}:
        if leftover != dest and leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
    journal.unlink(missing_ok=True)
    _fsync_dir(dest.parent)


def check_replaceable(
    path: str | os.PathLike[str], marker: str, *, allow: Sequence[str] = ()
) -> None:
    """Refuse to replace ``path`` unless it is missing, empty, or a directory this kind of
    writer made (it holds ``marker``), or holds only the entries named in ``allow``.

    Raises:
        OverwriteRefusedError: ``path`` is a file, or a folder of other things.
    """
    dest = Path(path)
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir():
        raise OverwriteRefusedError(
            f"{dest} exists and is a file, not a folder written by vistrieve; choose another "
            "output path"
        )
    if (dest / marker).is_file():
        return
    others = sorted(e.name for e in dest.iterdir() if e.name not in allow)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise OverwriteRefusedError(
            f"{dest} exists and is not a vistrieve folder (no {marker}; it holds {shown}): "
            "it would be replaced wholesale, so nothing was written; choose a new or empty "
            "output folder"
        )


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    *,
    marker: str | None = None,
    allow: Sequence[str] = (),
) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it in on success.

    Yields the temporary directory to fill. On success the old directory (if any) is
    replaced; on failure the temporary directory is removed and the old one is untouched.
    At every instant ``path`` holds the old or the new directory: the swap is one atomic
    ``renameat2(RENAME_EXCHANGE)`` where the platform has it, else two renames under a
    journal that :func:`recover_directory` (called by loaders) uses to finish or roll back
    a swap a crash interrupted.

    Args:
        path: The destination directory.
        marker: When given, an existing ``path`` is replaced only if it holds this file (or
            is empty, or holds only ``allow`` entries); see :func:`check_replaceable`.
        allow: Entries an existing ``path`` may hold without ``marker``.

    Raises:
        OverwriteRefusedError: ``path`` is not this writer's to replace.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(dest)
    if marker is not None:
        check_replaceable(dest, marker, allow=allow)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    journal = _journal_path(dest)
    old: Path | None = None
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if dest.exists():
            # The journal names both sides before anything moves (see recover_directory).
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{tmp.name[-12:]}")
            atomic_write_json(journal, {"new": tmp.name, "old": old.name})
            if _exchange(tmp, dest):
                old = tmp  # the old directory now lives under the temporary name
            else:
                _rename(dest, old)
                _rename(tmp, dest)
            _fsync_dir(dest.parent)
            shutil.rmtree(old, ignore_errors=True)
            # Last: until the journal goes, a load cleans up what a crash left behind.
            journal.unlink()
            _fsync_dir(dest.parent)
        else:
            _rename(tmp, dest)
            _fsync_dir(dest.parent)
    except BaseException:
        if old is not None and not dest.exists() and old.is_dir():
            os.replace(old, dest)  # roll back a half-done swap
        shutil.rmtree(tmp, ignore_errors=True)
        journal.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ file records
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """Name, byte size and SHA-256 of a file, as stored in manifests to detect damage."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def check_files(directory: Path, records: list[dict[str, Any]]) -> None:
    """Check that every file listed in a manifest exists with its recorded size and
    checksum (records written before checksums existed are checked by size only).

    Raises:
        FileNotFoundError: a listed file is missing.
        IntegrityError: a listed file has another size or content (truncated, overwritten
            or damaged on disk); the message names it.
    """
    for rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise IntegrityError(
                f"{directory}: the manifest's file list is malformed ({rec!r}); rebuild it",
                directory,
            )
        f = directory / rec["name"]
        if not f.is_file():
            raise FileNotFoundError(
                f"{directory}: file {rec['name']!r} listed in the manifest is missing; "
                "rebuild the index or restore it from a backup"
            )
        size = f.stat().st_size
        if size != rec.get("bytes"):
            raise IntegrityError(
                f"{f} has {size} bytes but the manifest records {rec.get('bytes')}: the file "
                "is truncated or was changed after saving; rebuild the index or restore it "
                "from a backup",
                f,
            )
        want = rec.get("sha256")
        if want is not None and sha256_file(f) != want:
            raise IntegrityError(
                f"{f} does not match the SHA-256 recorded in the manifest: the file was "
                "damaged or changed after saving; rebuild the index or restore it from a "
                "backup",
                f,
            )


def advise_random(arr: np.ndarray) -> bool:
    """Tell the kernel that a memory-mapped array is read at random rows.

    Without it every page fault on the mapping reads ahead up to 128 KiB, so re-scoring a
    few hundred scattered rows per query reads ~30x the bytes it uses, and when the file
    does not fit the page cache the reads evict each other (measured: 1.3 GB/s of disk
    reads while searching a 10M-vector index in a 4 GiB memory limit).

    Returns:
        Whether the advice was given (False for an array that is not a whole-file
        ``np.memmap`` or a platform without ``madvise``).
    """
    import mmap

    mm = getattr(arr, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    advice = getattr(mmap, "MADV_RANDOM", None)
    if not isinstance(mm, mmap.mmap) or advice is None:
        return False
    mm.madvise(advice)
    return True
