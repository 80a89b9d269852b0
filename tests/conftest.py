"""Shared fixtures: tiny random models for every supported architecture, a word-level
tokenizer, and (slow) the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

WORDS = (
    "<pad> <eos> <bos> the capital of france is paris rome berlin city eiffel tower in a an "
    "located language spoken by people who speak mother tongue danielle darrieux english french "
    "german italy spain madrid london england he she it was born on and or not what where which"
).split()

# model_type -> tiny config kwargs (hidden 32-64, 2-4 layers)
TINY_CONFIGS = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=128),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}
ARCHS = sorted(TINY_CONFIGS)


def tiny_model(model_type: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    kwargs = dict(TINY_CONFIGS[model_type])
    kwargs.update(overrides)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(WORDS), pad_token_id=0, eos_token_id=1, bos_token_id=2, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    return model


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(WORDS)}
    tk = Tokenizer(tok_models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture
def llama() -> torch.nn.Module:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (slow: built from the GGUF once, then from the cache)."""
    from repedit import models

    return models.load("smollm2-135m")


def fact_requests(n: int = 3) -> list:
    """The first ``n`` of three small edit requests (with rephrase and locality prompts) the
    evaluation tests share."""
    from repedit import EditRequest

    reqs = [
        EditRequest("the capital of france is", "rome", subject="france", ground_truth="paris",
                    rephrase_prompts=["the city of france is"],
                    locality_prompts=[{"prompt": "the capital of spain is", "ground_truth": "madrid"}], case_id=0),
        EditRequest("the mother tongue of danielle darrieux is", "english", subject="danielle darrieux",
                    ground_truth="french", rephrase_prompts=["danielle darrieux speak"],
                    locality_prompts=[{"prompt": "people in london speak", "ground_truth": "english"}], case_id=1),
        EditRequest("the eiffel tower is located in", "berlin", subject="eiffel tower", ground_truth="paris",
                    rephrase_prompts=["where is the eiffel tower it is in"],
                    locality_prompts=[{"prompt": "the capital of italy is", "ground_truth": "rome"}], case_id=2),
    ]
    return reqs[:n]


def all_hooks(model: torch.nn.Module) -> dict:
    """Every forward (pre-)hook on the model's modules, keyed (module name, kind, id)."""
    return {
        (n, kind, k): fn
        for n, m in model.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks")
        for k, fn in getattr(m, kind).items()
    }


def ours(hooks: dict) -> list:
    """The keys of the hooks an EditableModel registered."""
    return [k for k, fn in hooks.items() if "EditableModel" in getattr(fn, "__qualname__", "")]


def param_hashes(model: torch.nn.Module) -> dict[str, bytes]:
    import hashlib

    return {n: hashlib.sha256(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).digest()
            for n, p in model.named_parameters()}


# The evaluation data (CounterFact, zsRE, ...) sits in ../shared/data beside the repository;
# repedit itself reads it only through $REPEDIT_DATA or an explicit path.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if SHARED_DATA.is_dir():
    os.environ.setdefault("REPEDIT_DATA", str(SHARED_DATA))

@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Each test session gets its own repedit cache for what methods build (corpus states, name
    banks, null spaces), so no test reads a file an earlier version of the code wrote; the
    converted real models are shared with the user's cache (they take minutes to build)."""
    from repedit.cache import cache_dir

    real = cache_dir()
    (real / "models").mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("repedit-cache")
    (root / "models").symlink_to(real / "models", target_is_directory=True)
    old = os.environ.get("REPEDIT_CACHE")
    os.environ["REPEDIT_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("REPEDIT_CACHE", None)
    else:
        os.environ["REPEDIT_CACHE"] = old


# One thread: tiny models run fastest on it, and the suite does not fight other jobs for the
# machine's 2 cores (two OpenMP threads on a busy 2-core machine made tiny-model steps ~50x slower).
torch.set_num_threads(1)
