"""repedit's on-disk cache: where it lives, how its files are keyed and written.

Everything repedit computes once per model and keeps (dequantized models, null-space
statistics, text the model generated for a corpus) lives under :func:`cache_dir`, in a
folder per kind, in files named by :func:`cache_key` of the model's fingerprint and the
settings. Files are written atomically (:func:`atomic_write`): a reader sees the old file
or the complete new one, never half of one.

Example::

    from repedit import cache
    path = cache.cache_dir() / "corpus" / f"{cache.cache_key(model, n=2000)}.txt"
    cache.atomic_write(path, lambda tmp: tmp.write_text("..."))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

__all__ = ["cache_dir", "cache_key", "atomic_write", "cached_tensors"]


def cache_dir() -> Path:
    """The root of repedit's on-disk cache: ``$REPEDIT_CACHE`` or ``~/.cache/repedit``.

    Example::

        cache_dir() / "models"   # converted models
    """
    env = os.environ.get("REPEDIT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "repedit"


def cache_key(model: Any = None, **settings: Any) -> str:
    """A 32-hex key of the model's fingerprint (if given) and JSON-serialisable settings.

    Example::

        cache_key(model, layer=5, corpus="…sha256…")
    """
    blob: dict[str, Any] = dict(settings)
    if model is not None:
        from repedit.adapters import fingerprint

        blob["fp"] = fingerprint(model)
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    On any error the temporary file is removed and ``path`` is left as it was.

    Example::

        atomic_write("out.txt", lambda tmp: tmp.write_text("hello"))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def cached_tensors(kind: str, key: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Tensors kept in ``cache_dir()/kind/key.safetensors``: read when present, else built by
    ``build()`` and written atomically. An unreadable file is rebuilt (with a warning).

    Example::

        t = cached_tensors("corpus_states", cache_key(model, layer=5), lambda: {"states": compute()})
    """
    from safetensors.torch import load_file, save_file

    path = cache_dir() / kind / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception as err:  # a corrupt or truncated cache file is rebuilt
            logger.warning("ignoring unreadable cache file %s: %s", path, err)
    tensors = build()
    atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp)))
    logger.info("cached %s in %s", kind, path)
    return tensors
