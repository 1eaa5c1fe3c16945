"""Where mam-tf keeps what it builds on first use (the fused TensorFlow op, the C core, the
Cortex-M7 firmware), and the one way each of them is built: once per key, under a file lock,
into a private temporary directory that appears under its final name by an atomic rename.

The cache root is ``$MAM_TF_CACHE``, default ``~/.cache/mam-tf``. A build directory is finished
when it holds :data:`MARKER`, written last, which lists every file of the build with its size: a
directory without it (a build killed half way, a copy that lost files) is removed and rebuilt.
A failed build leaves no directory under the final name; its log stays in ``<name>.failed/``
and the error names that directory and the log's last lines.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

__all__ = ["MARKER", "LOG", "BuildError", "Builder", "cache_root", "build_key", "is_complete",
           "cached_build"]

#: Written last into a finished build directory: {relative file name: size in bytes}.
MARKER = ".complete.json"
#: Every command a build runs, and its output, in the order they ran.
LOG = "build.log"
#: How many lines of the log an error quotes.
TAIL_LINES = 20


def cache_root() -> Path:
    return Path(os.environ.get("MAM_TF_CACHE") or Path.home() / ".cache" / "mam-tf")


class BuildError(RuntimeError):
    """A build failed: ``build_dir`` holds its log."""

    def __init__(self, message: str, build_dir: Optional[Path] = None):
        super().__init__(message)
        self.build_dir = build_dir


def build_key(files: Iterable[Path] = (), root: Optional[Path] = None,
              parts: Sequence[str] = ()) -> str:
    """A 16-hex-digit key of ``files`` (their names relative to ``root`` when given, and their
    bytes) and of ``parts`` (tool paths and versions, flags, anything else the build depends on)."""
    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        name = f.relative_to(root) if root is not None else f.name
        h.update(str(name).encode() + b"\0" + f.read_bytes() + b"\0")
    for part in parts:
        h.update(b"\1" + str(part).encode() + b"\0")
    return h.hexdigest()[:16]


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` is a finished build: its marker is readable and every file it
    lists is there with the size it had when the build finished."""
    try:
        listed = json.loads((Path(directory) / MARKER).read_text())
        return isinstance(listed, dict) and all(
            (Path(directory) / name).stat().st_size == size for name, size in listed.items())
    except (OSError, ValueError):
        return False


class Builder:
    """What a build function is given: ``dir``, the private directory to fill, and
    :meth:`run`, which runs a command with its output appended to the build's log."""

    def __init__(self, directory: Path, what: str, error: type, failed_dir: Path):
        self.dir = directory
        self.what = what
        self._error = error
        self._failed_dir = failed_dir

    @property
    def log(self) -> Path:
        return self.dir / LOG

    def note(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(text.rstrip("\n") + "\n")

    def run(self, cmd: Sequence[Union[str, Path]], step: str, cwd=None,
            timeout: Optional[float] = None, log_stdout: bool = True) -> str:
        """Runs ``cmd``; returns its stdout (logged unless ``log_stdout`` is False: a tool whose
        output is data, not diagnostics). Raises ``error`` (naming ``step``, the command, its
        exit status, the kept build directory and the log's last lines) when it fails."""
        cmd = [str(c) for c in cmd]
        self.note(f"$ {' '.join(cmd)}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.note(f"{type(e).__name__}: {e}")
            raise self.failure(f"{step} failed (`{cmd[0]}`: {e})") from e
        self.note((proc.stdout if log_stdout else "") + proc.stderr
                  + f"[exit status {proc.returncode}]")
        if proc.returncode != 0:
            raise self.failure(f"{step} failed (`{' '.join(cmd)}` exited {proc.returncode})")
        return proc.stdout

    def failure(self, message: str) -> Exception:
        """An ``error`` for ``message`` that names where the log will be kept and quotes it."""
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        return self._error(f"building {self.what}: {message}; the log is kept in "
                           f"{self._failed_dir / LOG}, its last lines:\n{tail}")


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps builds from clashing
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _seal(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER)
    listed = {str(p.relative_to(directory)): p.stat().st_size for p in files}
    (directory / MARKER).write_text(json.dumps(listed, indent=1, sort_keys=True))


def cached_build(final: Path, build: Callable[[Builder], None], *, what: str,
                 error: type = BuildError) -> Path:
    """Returns ``final`` once it is a finished build, calling ``build`` to make it if needed.

    ``build(b)`` fills the private directory ``b.dir`` (running its commands with ``b.run``)
    and raises on failure. Among processes that race here, one builds while the others wait on
    ``<final>.lock`` and then reuse its result. ``error`` is the exception class raised when
    the build fails (it takes one message argument).
    """
    final = Path(final)
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    failed = final.parent / f"{final.name}.failed"
    with _file_lock(final.parent / f"{final.name}.lock"):
        if is_complete(final):  # another process built it while we waited
            return final
        if final.exists():  # a half or corrupted build: never reused, never renamed over
            print(f"[mam-tf] {final} is not a finished build; rebuilding it", file=sys.stderr)
            shutil.rmtree(final)
        print(f"[mam-tf] building {what} (once): {final}", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        builder = Builder(tmp, what, error, failed)
        try:
            try:
                build(builder)
            except Exception as e:
                named = isinstance(e, error) and str(failed) in str(e)  # from Builder.run
                err = e if named else builder.failure(f"{type(e).__name__}: {e}")
                shutil.rmtree(failed, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rename(tmp, failed)  # keep the log to read
                if err is e:
                    raise
                raise err from e
            _seal(tmp)
            tmp.chmod(0o755)  # mkdtemp made it private; the cache may be shared
            os.rename(tmp, final)  # atomic: the directory is complete or absent
            shutil.rmtree(failed, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
