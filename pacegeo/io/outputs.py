"""Safe outputs: checked before any work, written together, never over an input.

Every file or folder pacegeo writes goes through this module:

* :func:`check_outputs` validates a run's outputs up front: none may be, contain or lie inside an
  input (whatever ``overwrite`` says); the folders exist and are writable (tried, not guessed);
  names, and the temporary names used while writing, fit the file system; suffixes match the
  format; existing outputs need ``overwrite``; no two outputs collide.
* :class:`OutputSet` writes a run's outputs under temporary names beside their destinations and
  moves them into place together at the end: either every output appears, or none does and the
  previous files are untouched (a failure while moving rolls back the ones already moved).
* :func:`atomic_write`, :func:`atomic_path` and :func:`atomic_dir` are the one-output case (an open
  file, a file name, a folder); :func:`save_tensors` writes a safetensors file through
  :func:`atomic_path` (every checkpoint pacegeo writes).

A temporary name is ``.<name>.<8 random characters>.tmp`` (``.old`` for a replaced file kept
until the set is complete), :data:`TEMP_NAME_EXTRA` bytes longer than the name.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pacegeo.errors import OutputError, is_memory_error, option

#: Bytes a temporary name adds to an output's name: ``"." + name + "." + 8 random + ".tmp"``.
TEMP_NAME_EXTRA = 14

__all__ = [
    "OutputSet",
    "OutputSpec",
    "TEMP_NAME_EXTRA",
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "check_outputs",
    "save_tensors",
    "describe_os_error",
]


@dataclass(frozen=True)
class OutputSpec:
    """One output of a run.

    Attributes:
        path: where it goes.
        kind: ``"file"`` or ``"folder"``.
        suffixes: accepted suffixes of a file (lower case, e.g. ``(".ply",)``); empty: any.
        what: how messages name it (``"point cloud"``, ``"preview"``, ``"COLMAP folder"``).
    """

    path: Path
    kind: str = "file"
    suffixes: tuple[str, ...] = ()
    what: str = "output"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(os.path.abspath(Path(self.path).expanduser())))
        if self.kind not in ("file", "folder"):
            raise ValueError(f"output kind must be 'file' or 'folder', got {self.kind!r}")


def describe_os_error(err: BaseException) -> str:
    """A short reason for an OS or memory error while writing (no library advice, no traceback)."""
    if is_memory_error(err):
        return "out of memory"
    if isinstance(err, OSError):
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on the device"
        if err.errno == errno.EFBIG:
            return "file too large for the file system or the process's file-size limit"
        return err.strerror or str(err) or type(err).__name__
    return type(err).__name__


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _path_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_PATH_MAX"))
    except (OSError, ValueError):
        return 4096


def _probe(folder: Path, name: str, kind: str) -> None:
    """Create and remove a temporary entry named like the ones :class:`OutputSet` uses."""
    prefix, suffix = f".{name}.", ".tmp"
    if kind == "folder":
        os.rmdir(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder))
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(fd)
        os.unlink(tmp)


def _check_place(spec: OutputSpec) -> None:
    """The output's name, suffix and folder."""
    path, what = spec.path, spec.what
    if spec.kind == "file" and spec.suffixes and path.suffix.lower() not in spec.suffixes:
        raise OutputError(f"{what} {path} must end in {' or '.join(spec.suffixes)}")
    name = path.name
    if not name or name in (".", ".."):
        raise OutputError(f"{what} {path} has no file name")
    folder = path.parent
    try:
        if not folder.exists():
            raise OutputError(f"the folder of {what} {path} does not exist ({folder})")
        if not folder.is_dir():
            raise OutputError(f"the folder of {what} {path} is not a folder ({folder})")
    except OSError as err:  # e.g. a path longer than the system allows
        raise OutputError(f"cannot use {what} {str(path)[:80]}...: {describe_os_error(err)}") from None
    size, limit = len(os.fsencode(name)), _name_max(folder)
    if size + TEMP_NAME_EXTRA > limit:
        raise OutputError(
            f"the name of {what} {name[:40]}... is too long: {size} bytes, the file system allows "
            f"{limit} including {TEMP_NAME_EXTRA} for a temporary name while writing; choose a shorter name"
        )
    if len(os.fsencode(str(path))) + TEMP_NAME_EXTRA >= _path_max(folder):
        raise OutputError(f"the path of {what} is too long for the file system; choose a shorter one")


def _check_target(spec: OutputSpec, overwrite: bool) -> None:
    """What is at the output's place already, and whether a file can be created there."""
    path, what, folder = spec.path, spec.what, spec.path.parent
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink() and spec.kind == "file":
            raise OutputError(f"{what} {path} is an existing folder; choose another name")
        if spec.kind == "folder" and not path.is_dir():
            raise OutputError(f"{what} {path} is an existing file; choose another name")
        if not overwrite:
            raise OutputError(f"{what} {path} already exists; pass {option('overwrite')} to replace it")
    try:
        _probe(folder, path.name, spec.kind)
    except OSError as err:
        raise OutputError(f"cannot write {what} {path}: no file can be created in {folder} ({describe_os_error(err)})") from None


def check_outputs(
    outputs: Sequence[OutputSpec], inputs: Sequence[str | os.PathLike] = (), overwrite: bool = False
) -> list[OutputSpec]:
    """Validate a run's outputs before any work (see the module docstring); returns them.

    Args:
        outputs: what the run will write.
        inputs: files and folders the run reads (images, videos, folders of frames, weights, maps).
            No output may be one of them, lie inside one, or contain one, whatever ``overwrite``.
        overwrite: whether existing outputs may be replaced.

    Raises:
        OutputError: the first problem found, in one line.
    """
    outputs = list(outputs)
    real_inputs = [(Path(p), _real(Path(p).expanduser())) for p in inputs if p is not None]
    seen: dict[Path, OutputSpec] = {}
    for spec in outputs:  # first where each output goes (refusals that protect inputs come first) ...
        _check_place(spec)
        # Where the output lands: its folder resolved, its own name kept (a link there is replaced,
        # not followed) -- and, for an existing link, what it points to as well.
        target = _real(spec.path.parent) / spec.path.name
        places = {target, _real(spec.path)}
        for shown, real in real_inputs:
            for place in places:
                if place == real:
                    raise OutputError(f"{spec.what} {spec.path} is the input {shown}; choose another output")
                if _inside(place, real):
                    raise OutputError(
                        f"{spec.what} {spec.path} lies inside the input folder {shown}; write outputs outside the input"
                    )
                if _inside(real, place):
                    raise OutputError(f"{spec.what} {spec.path} contains the input {shown}; choose another output")
        for other_place, other in seen.items():
            if other_place == target:
                raise OutputError(f"{spec.what} and {other.what} would both be written to {spec.path}")
            if _inside(target, other_place) or _inside(other_place, target):
                inner, outer = (spec, other) if _inside(target, other_place) else (other, spec)
                raise OutputError(f"{inner.what} {inner.path} lies inside {outer.what} {outer.path}; choose separate places")
        seen[target] = spec
    for spec in outputs:  # ... then what is there already
        _check_target(spec, overwrite)
    return outputs


class OutputSet:
    """Write several outputs and make them appear together (see the module docstring).

    ::

        with OutputSet(specs, inputs=[frames_dir], overwrite=False) as outputs:
            write_ply(outputs.staged(ply_spec), ...)        # a temporary path beside the target
            write_colmap(outputs.staged(colmap_spec), ...)  # a temporary folder, already created
        # here every output is in place, or (on an exception) none was touched

    The checks of :func:`check_outputs` run again on entry (things may have changed since the run
    started). Failures while writing (disk full, out of memory) become :class:`OutputError`.
    """

    def __init__(
        self, outputs: Sequence[OutputSpec], inputs: Sequence[str | os.PathLike] = (), overwrite: bool = False
    ) -> None:
        self.outputs = list(outputs)
        self.inputs = list(inputs)
        self.overwrite = overwrite
        self._staged: dict[Path, Path] = {}
        self.committed = False

    def __enter__(self) -> "OutputSet":
        check_outputs(self.outputs, self.inputs, self.overwrite)
        try:
            for spec in self.outputs:
                folder, prefix = spec.path.parent, f".{spec.path.name}."
                if spec.kind == "folder":
                    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder))
                else:
                    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
                    os.close(fd)
                    tmp = Path(name)
                self._staged[spec.path] = tmp
        except OSError as err:
            self._discard()
            raise OutputError(f"cannot prepare the outputs: {describe_os_error(err)}") from None
        return self

    def staged(self, spec_or_path: OutputSpec | str | os.PathLike) -> Path:
        """The temporary path to write ``spec_or_path`` to (a file path, or an existing empty folder)."""
        path = spec_or_path.path if isinstance(spec_or_path, OutputSpec) else Path(os.path.abspath(spec_or_path))
        return self._staged[path]

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            if (isinstance(exc, OSError) or is_memory_error(exc)) and not isinstance(exc, OutputError):
                names = ", ".join(str(s.path) for s in self.outputs)
                raise OutputError(
                    f"writing failed ({describe_os_error(exc)}); nothing was written or replaced ({names})"
                ) from None
            return False
        self._commit()
        return False

    def _discard(self) -> None:
        for tmp in self._staged.values():
            _remove(tmp)
        self._staged.clear()

    def _commit(self) -> None:
        done: list[tuple[Path, Path | None]] = []  # (final path, its previous content moved aside)
        try:
            for spec in self.outputs:
                tmp = self._staged[spec.path]
                mode = 0o777 if spec.kind == "folder" else 0o666
                os.chmod(tmp, mode & ~_umask())
                old = None
                if spec.path.exists() or spec.path.is_symlink():
                    old = _aside(spec.path)
                    os.replace(spec.path, old)
                done.append((spec.path, old))
                os.replace(tmp, spec.path)
        except OSError as err:
            for final, old in reversed(done):  # roll back: what is at `final` now is ours
                with contextlib.suppress(OSError):
                    _remove(final)
                    if old is not None:
                        os.replace(old, final)
            self._discard()
            raise OutputError(f"could not move the outputs into place ({describe_os_error(err)}); nothing was replaced") from None
        self._staged.clear()
        for _, old in done:  # only now is the previous content no longer needed
            if old is not None:
                _remove(old)
        self.committed = True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _aside(path: Path) -> Path:
    """A fresh name beside ``path`` to move its previous content to."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", inputs: Sequence[str | os.PathLike] = ()) -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; when the body succeeds it replaces ``path``.

    An existing ``path`` is replaced (a file writer's usual behaviour); ``inputs`` it must not
    touch are checked as in :func:`check_outputs`. On failure ``path`` is untouched and no
    temporary file is left.
    """
    if "w" not in mode and "x" not in mode:
        raise ValueError(f"atomic_write needs a write mode, got {mode!r}")
    spec = OutputSpec(Path(path))
    with OutputSet([spec], inputs, overwrite=True) as outputs:
        with open(outputs.staged(spec), mode.replace("x", "w")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` for writers that take a file name (safetensors,
    ``np.save``); when the body succeeds the file replaces ``path``. Same rules as :func:`atomic_write`."""
    spec = OutputSpec(Path(path))
    with OutputSet([spec], inputs, overwrite=True) as outputs:
        yield outputs.staged(spec)


def save_tensors(state: dict, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``state`` (name -> tensor) as a safetensors file with ``metadata``, atomically: the
    parent folder is created, the tensors are detached, made contiguous and moved to the CPU, and
    an interrupted write leaves no half-written file (:func:`atomic_path`). Returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the body succeeds it becomes ``path``.

    An existing ``path`` raises :class:`OutputError` unless ``overwrite``.
    """
    spec = OutputSpec(Path(path), kind="folder")
    with OutputSet([spec], inputs, overwrite=overwrite) as outputs:
        yield outputs.staged(spec)
