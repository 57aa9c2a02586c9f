"""Files the library writes and reads: atomic writes, safe torch loading, and one error type for a bad file.

Every file the library reads (data, synthetic sets, checkpoints, cache entries, feature nets) that turns out to be
unreadable, truncated, of the wrong kind or unwritable raises :class:`BadFileError`, a ``ValueError`` naming the file
and what is wrong with it, so a caller (the command line) can report it in one line. Writes go to a hidden temporary
``.NAME.tmpPID`` beside the target and are renamed over it: a crash or a kill mid-write leaves the previous file
intact, and the temporaries of dead processes are removed by the next write to the same folder.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import IO, Any, Callable

import torch


class BadFileError(ValueError):
    """A file that cannot be read (or written) as the library needs: ``path`` and ``problem`` say which and why."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message: libraries' messages run to paragraphs."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp{pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove ``.NAME.tmpPID`` files beside ``path`` left by writers that were killed (PID no longer alive)."""
    removed = []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp(\d+)")
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:  # a read-only folder: nothing to tidy, and not this call's business to fail on
                pass
    return removed


def check_writable(path: str | os.PathLike) -> Path:
    """Fail now, not after hours of work, if ``path`` cannot be written; tidies stale temporaries beside it.

    Folders it has to create for the probe are removed again, so a run that then fails leaves nothing behind.
    """
    path = Path(path)
    if path.is_dir():
        raise BadFileError(path, "is a folder; give a file name")
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    existing = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    if not existing.is_dir():
        raise BadFileError(path, f"cannot be written ({existing} is a file, not a folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = _temporary(path, os.getpid())
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise BadFileError(path, f"cannot be written ({err.strerror or first_line(err)})") from None
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
    remove_stale_temporaries(path)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``: never half a file.

    Any failure (unpicklable value, full disk, read-only folder, Ctrl-C) removes the temporary and leaves the old file;
    a kill leaves a temporary that the next write beside it removes.
    """
    path = Path(path)
    tmp = _temporary(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise BadFileError(path, f"cannot be written ({err.strerror or first_line(err)})") from err
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str | os.PathLike, what: str) -> Any:
    """torch.load with ``weights_only=True`` onto the CPU; anything unreadable is a :class:`BadFileError`.

    A missing file stays a ``FileNotFoundError``. ``what`` names the expected kind of file in the message.
    """
    try:
        with warnings.catch_warnings():  # torch's remarks on pickle protocols would only blur the one error line
            warnings.simplefilter("ignore")
            return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:  # objects beyond tensors and plain data (could run code), or not a pickle
        # torch's reason, without its advice on allowlisting the object: that is the unsafe way round
        detail = (str(err).partition("WeightsUnpickler error:")[2].strip() or first_line(err)).splitlines()[0]
        detail = detail.split(" was not an allowed global")[0].split(". ")[0].strip()
        raise BadFileError(path, f"is not a {what}: safe (weights-only) loading refused it ({detail})") from None
    except Exception as err:  # truncated zip, not a torch file at all, ...
        raise BadFileError(path, f"is not a readable {what} ({type(err).__name__}: {first_line(err)})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
