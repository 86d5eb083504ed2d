"""Where a command writes: an output file, an output folder or a server's port, checked first.

A command that trains for minutes, registers a model or reads a study and only then finds that
it cannot write its --out (a folder where a file goes, a path under a file, /proc) has wasted
the work and ends in a traceback. Every command that writes checks the place here before it does
anything else, so that the same mistake is the same one line (``ConfigError``) in every command.

Writability is tried, not asked: ``os.access`` says yes to root everywhere, /proc included, so
the nearest existing folder is tested with an unnamed temporary file (O_TMPFILE on Linux; it
never shows in the folder's listing).
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import ConfigError

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
PATH_MAX = 4096  # bytes in a whole path on Linux; a longer one fails even to be looked at


def check_output_file(path: str | Path, suffixes: Sequence[str], *, option: str = "--out",
                      kind: str | None = None) -> Path:
    """``path`` as a file this command may write: ending in one of ``suffixes`` (any case), not
    a folder, a link or a special file, in a folder that exists or can be made and is writable.
    ``kind`` says what the file is, for the message (default: the suffixes)."""
    path = _fits(Path(path), option)
    ends = _either(suffixes)
    with _looking(path, option):
        if path.is_symlink():
            raise ConfigError(f"{option} {path}: a symbolic link (to {os.readlink(path)}); give "
                              f"the file itself")
        if path.is_dir():
            raise ConfigError(f"{option} {path}: a folder; give a file path ending {ends}")
        if path.suffix.lower() not in {s.lower() for s in suffixes}:
            raise ConfigError(f"{option} {path}: {kind or f'expected a {ends} file'}; give a "
                              f"path ending {ends}")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{option} {path}: not a regular file; give a file path ending "
                              f"{ends}")
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigError(f"{option} {path}: an existing file that is not writable")
        _check_can_make(path, path.parent, option)
    return path


def check_output_folder(path: str | Path, *, option: str = "--out") -> Path:
    """``path`` as a folder this command may write into: an existing one that is writable, or
    one that can be made (its nearest existing parent a writable folder). Links are the
    caller's rule (export follows one only with --force)."""
    path = _fits(Path(path), option)
    with _looking(path, option):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{option} {path}: an existing file, not a folder; choose another "
                              f"path")
        _check_can_make(path, path, option)
    return path


def check_port_free(port: int, *, option: str = "--port", make: str | None = None) -> None:
    """The port a server is about to listen on, on 127.0.0.1: bound and let go at once, so that
    a taken one is one line here instead of a server that dies (or exits 0) on start."""
    hint = f" (make {make} PORT=N)" if make else ""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers do: a port held only by a closed connection's TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            why = ("is in use (another server is listening on it)"
                   if exc.errno == errno.EADDRINUSE else
                   "needs root (ports below 1024)" if exc.errno == errno.EACCES else
                   f"cannot be opened ({exc.strerror})")
            raise ConfigError(f"{option} {port}: port {port} on 127.0.0.1 {why}; choose "
                              f"another with {option} N{hint}") from None


@contextmanager
def _looking(path: Path, option: str) -> Iterator[None]:
    """A look at the path that the system refuses (a folder on the way that cannot be read, a
    loop of links) is one line too."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot be looked at ({exc.strerror})") from None


def _fits(path: Path, option: str) -> Path:
    """A path the file system can hold: a name or a path too long fails every look at it (even
    ``is_symlink``) with an OSError, so it is refused before anything else."""
    size = len(os.fsencode(path))
    if size > PATH_MAX:
        raise ConfigError(f"{option}: a path of {size:,} bytes; a path holds at most {PATH_MAX}")
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(f"{option} {path}: a name of {len(os.fsencode(part))} bytes; a "
                              f"file name holds at most {NAME_MAX}")
    return path


def _check_can_make(path: Path, folder: Path, option: str) -> None:
    """The nearest existing folder at or above ``folder`` (where ``path`` goes) is a folder
    this process can write in."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, so the folder cannot be made")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError:
        raise ConfigError(f"{option} {path}: cannot write in {existing}") from None


def _either(suffixes: Sequence[str]) -> str:
    return suffixes[0] if len(suffixes) == 1 else \
        f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
