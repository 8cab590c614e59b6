"""Atomic local writes for mmengine: a run killed while writing a checkpoint leaves the previous one.

mmengine writes checkpoints (and ``last_checkpoint``) with ``open(path, 'wb')``
in place: a run killed mid-write leaves a truncated ``iter_N.pth`` that looks
like a checkpoint. :class:`AtomicLocalBackend` writes to a temporary file in
the same folder, flushes it to disk and renames it over the target, so a path
only ever holds a whole file. :func:`use_atomic_local_writes`, called when
``projects.acouplenet`` is imported, makes it mmengine's backend for local
paths. Besides: a file's sha256, and :func:`check_output_folder`, which the
tools run on their output folders before doing any work.
"""
import hashlib
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio import io as mmengine_io


def sha256sum(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_folder(path: str, what: str) -> str:
    """``path`` made absolute, where a folder can be written: it is one, or the nearest existing folder above
    it is one; creates nothing. A ValueError naming ``what`` and the fix where a file is in the way or the
    folder is not writable."""
    path = osp.abspath(path)
    existing = path
    while not osp.exists(existing):  # the nearest existing part of the path ('/' at the latest)
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise ValueError(f'{what} {path}: a file of that name (or of a folder above it) is in the way; name a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f'{what} {path}: {existing} is not writable; name a folder you can write to')
    return path


def atomic_write(data: Union[bytes, str], filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
    """Write ``data`` to ``filepath`` through a temporary file and a rename."""
    filepath = str(filepath)
    folder = osp.dirname(osp.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.', suffix='.part', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data.encode(encoding) if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put`` and ``put_text`` replace files atomically."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(obj, filepath, encoding)


def use_atomic_local_writes() -> None:
    """Register :class:`AtomicLocalBackend` for local paths (idempotent)."""
    if mmengine_io.prefix_to_backends.get('') is AtomicLocalBackend:
        return
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # Backends cached before this call would still write in place.
    for key, backend in list(mmengine_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            del mmengine_io.backend_instances[key]
