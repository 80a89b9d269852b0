"""The files of a converted model: sha256 checks of GGUF files, the assembly of chunked ones,
the float checkpoint written from a GGUF-loaded model, and the atomic build of a cache entry
(a lock, a temporary directory, a completion marker, one rename). :mod:`repedit.models`
locates the files and drives the build.

Example::

    final = _materialize(root / "models" / "x", build_into, {"alias": "x"})   # complete or absent
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ChecksumMismatch", "COMPLETE_MARKER", "CACHE_FORMAT"]

logger = logging.getLogger(__name__)

#: Name of the file whose presence marks a cache directory as complete.
COMPLETE_MARKER = ".repedit-complete.json"
#: Bumped when the on-disk layout of a cached model changes.
CACHE_FORMAT = 1

_CHUNK_BLOCK = 8 * 1024 * 1024
_WEIGHTS_FILE = "model.safetensors"


class ChecksumMismatch(RuntimeError):
    """A GGUF file (or the concatenation of its chunks) has an unexpected sha256."""


def _record_sha256(distribution: str, file_path: Path) -> str | None:
    """The sha256 pip recorded for an installed file (free: no hashing)."""
    try:
        dist = importlib.metadata.distribution(distribution)
        record = dist.read_text("RECORD")
    except Exception:  # noqa: BLE001 - any metadata problem: just no recorded hash
        return None
    if not record:
        return None
    for row in csv.reader(record.splitlines()):
        if len(row) < 2 or not row[1].startswith("sha256="):
            continue
        try:
            located = Path(str(dist.locate_file(row[0]))).resolve()
        except OSError:
            continue
        if located == file_path.resolve():
            digest = row[1][len("sha256=") :]
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    return None


def _sha256_files(paths: tuple[Path, ...] | list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def _check_sha256(spec_alias: str, what: str, expected: str | None, actual: str) -> None:
    if expected is not None and actual != expected.lower():
        raise ChecksumMismatch(
            f"{spec_alias}: sha256 mismatch for {what}: expected {expected}, actual {actual}. "
            "The installed model package is corrupt or a different version; reinstall it."
        )


def _assemble(spec: Any, source: Any, dest: Path) -> Path:
    """Concatenate the chunks into ``dest`` in a streaming pass that also hashes them."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for chunk in source.files:
            with open(chunk, "rb") as fh:
                while block := fh.read(_CHUNK_BLOCK):
                    digest.update(block)
                    out.write(block)
    _check_sha256(spec.alias, f"{dest.name} (concatenated from {len(source.files)} chunks)",
                  source.sha256, digest.hexdigest())
    return dest


def _save_converted(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", out: Path) -> None:
    """Write a GGUF-loaded model as a plain float checkpoint (``save_pretrained`` refuses)."""
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)  # else from_pretrained would expect GGUF again
    config.pop("_name_or_path", None)
    config.pop("_model_name_or_path", None)
    with open(out / "config.json", "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    if model.generation_config is not None:
        model.generation_config.to_json_file(str(out / "generation_config.json"))

    # Tied parameters share storage and safetensors refuses shared tensors. Drop the ones
    # transformers declares tied (lm_head.weight -> model.embed_tokens.weight for both
    # models; tie_word_embeddings is in the config), from_pretrained re-ties them; copy any
    # other shared tensor.
    tied = getattr(model, "_tied_weights_keys", None) or {}
    state: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    dropped: list[str] = []
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
        )
        if key in seen:
            if name in tied:
                dropped.append(f"{name} (= {seen[key]})")
                continue
            tensor = tensor.clone()
        else:
            seen[key] = name
        state[name] = tensor.contiguous()
    if dropped:
        logger.debug("Not saving tied parameters: %s", ", ".join(dropped))
    save_file(state, str(out / _WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _build_lock(final: Path) -> Iterator[bool]:
    """Serialise builds of one cache entry across processes; yields whether it could lock.

    POSIX only (``fcntl``); elsewhere builds may race, which wastes work but stays safe.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    lock_path = final.parent / f".{final.name}.lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _materialize(final: Path, builder: Callable[[Path], None], marker: dict[str, Any]) -> Path:
    """Make ``final`` a complete cache entry, building it atomically if needed.

    ``builder`` fills a fresh temporary directory next to ``final``; only after it
    returns is the completion marker written and the directory renamed into place, so
    an interrupted build never leaves a ``final`` that looks usable. A ``final`` without
    the marker (left by something else) is discarded and rebuilt.
    """
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final) as locked:
        if _is_complete(final):  # another process finished while we waited
            return final
        if locked:  # leftovers of builds that crashed (nobody else builds ``final`` now)
            for stale in final.parent.glob(f".{final.name}.*-*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            builder(tmp)
            with open(tmp / COMPLETE_MARKER, "w", encoding="utf-8") as fh:
                json.dump(marker, fh, indent=2, sort_keys=True)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            if final.exists():
                logger.warning("Discarding incomplete cache directory %s", final)
                trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                os.replace(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
