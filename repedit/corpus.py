"""General text and entity names that the methods use, shipped with the package.

Methods need text that is *not* about the edited facts: BaFT's and the codebook's negatives,
the prefixes of augmented training copies, the statistics of a null space, and names of other
entities for subject negatives. A :class:`Corpus` provides all of them from one source:

- ``Corpus.default()``: WikiText-2's test split, shipped inside the wheel
  (``repedit/resources/wikitext2-test.raw.gz``, CC BY-SA 3.0; see its README there);
- ``Corpus.from_file(path)``: any raw text file (WikiText's layout or plain lines);
- ``Corpus.from_texts([...])``: a list of strings;
- ``Corpus.from_model(model, tokenizer)``: text the model itself samples, cached on disk.

Sentences are the lines not starting with ``=``, split on ``" . "`` (WikiText's tokenised
full stop). Names are capitalised words, and pairs of them, that do not start a sentence.

Example::

    corpus = Corpus.default()
    corpus.sentences(limit=3)      # ['Robert Boulter is an English film , television and theatre actor', ...]
    corpus.names(5)                # ['Boulter', 'English', ...]
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

logger = logging.getLogger(__name__)

__all__ = ["Corpus", "resolve_corpus", "DEFAULT_CORPUS_FILE"]

#: the shipped default corpus, inside the package
DEFAULT_CORPUS_FILE = "wikitext2-test.raw.gz"

#: openers of the text a model generates for ``Corpus.from_model`` (general, not about any fact)
_MODEL_OPENERS = ("The", "In", "A", "It", "He", "She", "This", "On", "After", "During", "There", "According to",
                  "Many", "When", "Although", "Since")


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    return path.read_text(encoding="utf-8", errors="replace")


class Corpus:
    """Lines of general text, with the sentence and name views the methods read.

    Views are computed once per object and limit, so a Corpus can be shared by every method
    of an Editor. ``source`` says where the lines came from (for logs and cache keys).
    """

    def __init__(self, lines: Sequence[str], source: str, names: Sequence[str] | None = None):
        self.lines = [str(x) for x in lines]
        self.source = source
        #: entity names given by the user (then :meth:`names` returns them instead of mining the text)
        self.given_names = None if names is None else [str(n) for n in names]
        self._views: dict = {}

    def with_names(self, names: Sequence[str] | str | os.PathLike) -> "Corpus":
        """The same text with these entity names (a list, or a file with one name per line)
        for subject negatives instead of the names found in the text.

        Example::

            Corpus.default().with_names(["Eiffel Tower", "Louvre"]).names(1)   # ['Eiffel Tower']
        """
        if isinstance(names, (str, os.PathLike)):
            p = Path(names).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"entity-names file {p} not found; pass an existing file with one name per "
                                        "line, a list of names, or None for the names found in the corpus")
            names = [x.strip() for x in _read_text(p).splitlines() if x.strip()]
        elif not all(isinstance(n, str) for n in names):
            raise TypeError("entity names must be a list of strings or a path")
        return Corpus(self.lines, self.source, names=list(names))

    # ------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> "Corpus":
        """WikiText-2's test split, shipped with repedit (read once per process)."""
        global _DEFAULT
        if _DEFAULT is None:
            ref = resources.files("repedit") / "resources" / DEFAULT_CORPUS_FILE
            with resources.as_file(ref) as p:
                if not p.is_file():
                    raise FileNotFoundError(
                        f"repedit's shipped corpus {p} is missing: the installation is incomplete; reinstall "
                        "repedit, or pass a corpus (EditorConfig(corpus=path or [texts]))")
                _DEFAULT = cls(_read_text(p).splitlines(), source=f"repedit:{DEFAULT_CORPUS_FILE}")
        return _DEFAULT

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Corpus":
        """Lines of a text file (``.gz`` is decompressed). A missing file is an error."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} not found; pass an existing text file, a list of texts, "
                                    "or None for the corpus shipped with repedit")
        return cls(_read_text(p).splitlines(), source=str(p))

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "Corpus":
        """One line per text."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("a corpus given as texts must be a list of strings")
        return cls(list(texts), source=f"<{len(texts)} texts>")

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, n_texts: int = 512, max_new_tokens: int = 48, seed: int = 0,
                   batch_size: int = 32, use_cache: bool = True) -> "Corpus":
        """Text the model samples from general openers ("The", "In", …), one line per text.

        Cached under ``cache_dir()/corpus/`` by model fingerprint and settings, so it is
        generated once per model. Run it on the unedited model (``with edited.disabled():``).
        """
        from repedit.cache import atomic_write, cache_dir, cache_key

        key = cache_key(model, kind="model_corpus", n=n_texts, tokens=max_new_tokens, seed=seed, v=1)
        path = cache_dir() / "corpus" / f"{key}.txt"
        if use_cache and path.is_file():
            return cls(path.read_text(encoding="utf-8").splitlines(), source=f"model:{key}")
        texts = _sample_texts(model, tokenizer, n_texts, max_new_tokens, seed, batch_size)
        if use_cache:
            atomic_write(path, lambda tmp: tmp.write_text("\n".join(texts) + "\n", encoding="utf-8"))
        return cls(texts, source=f"model:{key}")

    # ------------------------------------------------------------ views
    @cached_property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for line in self.lines:
            h.update(line.encode("utf-8"))
            h.update(b"\n")
        if self.given_names is not None:
            h.update(b"\0names\0" + "\n".join(self.given_names).encode("utf-8"))
        return h.hexdigest()

    def sentences(self, limit: int | None = None, min_words: int = 4, max_words: int = 40) -> list[str]:
        """Sentences in file order: lines starting with ``=`` dropped, split on ``" . "``, those
        under ``min_words`` words dropped, longer ones cut to ``max_words`` words."""
        key = ("sentences", limit, min_words, max_words)
        if key not in self._views:
            out: list[str] = []
            for sent in self._pieces():
                words = sent.split()
                if len(words) < min_words:
                    continue
                out.append(" ".join(words[:max_words]))
                if limit is not None and len(out) >= limit:
                    break
            self._views[key] = out
        return list(self._views[key])

    def _pieces(self) -> Iterator[str]:
        """Every ``" . "``-separated piece of every line that does not start with ``=``."""
        for line in self.lines:
            line = line.strip()
            if line and not line.startswith("="):
                yield from line.split(" . ")

    def spread_sentences(self, count: int, max_words: int = 32) -> list[str]:
        """``count`` sentences of at least 6 words spread evenly over the whole corpus, with
        WikiText's tokenised spacing undone (``" @-@ "`` → ``"-"``, no space before ``,``)."""
        if count <= 0:
            return []
        key = ("spread", count, max_words)
        if key not in self._views:
            sents: list[str] = []
            for s in self._pieces():
                s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
                s = re.sub(r" ([,;:)'])", r"\1", s).replace("( ", "(")
                words = s.split()
                if len(words) >= 6:
                    sents.append(" ".join(words[:max_words]))
            step = max(1, len(sents) // count)
            self._views[key] = sents[::step][:count]
        return list(self._views[key])

    def names(self, limit: int, sentences: int = 4000) -> list[str]:
        """About ``limit`` entity names from the first ``sentences`` sentences: capitalised
        alphabetic words of 3+ letters that do not start a sentence, and such a word followed
        by another capitalised word ("Boulter", "Doctor Who"), in order of appearance."""
        if self.given_names is not None:
            return self.given_names[:limit]
        key = ("names", limit, sentences)
        if key not in self._views:
            names: list[str] = []
            seen: set[str] = set()
            for sent in self.sentences(limit=sentences):
                words = sent.split()
                for i in range(1, len(words)):
                    w = words[i]
                    if not (w[:1].isupper() and w.isalpha() and len(w) > 2):
                        continue
                    cand = [w]
                    if i + 1 < len(words) and words[i + 1][:1].isupper() and words[i + 1].isalpha():
                        cand.append(f"{w} {words[i + 1]}")
                    for c in cand:
                        if c not in seen:
                            seen.add(c)
                            names.append(c)
                    if len(names) >= limit:
                        break
                if len(names) >= limit:
                    break
            self._views[key] = names  # a pair may follow its word one past the limit
        return list(self._views[key])

    def name_pairs(self, limit: int = 200, sentences: int = 400) -> list[str]:
        """Up to ``limit`` pairs of adjacent capitalised alphabetic words ("Doctor Who") from the
        first ``sentences`` sentences, sentence starts included, in order of appearance."""
        key = ("pairs", limit, sentences)
        if key not in self._views:
            out: list[str] = []
            seen: set = set()
            for sent in self.sentences(limit=sentences):
                words = sent.split()
                for a, b in zip(words, words[1:]):
                    if a[:1].isupper() and b[:1].isupper() and a.isalpha() and b.isalpha() and (a, b) not in seen:
                        seen.add((a, b))
                        out.append(f"{a} {b}")
            self._views[key] = out[:limit]
        return list(self._views[key])

    def __len__(self) -> int:
        return len(self.lines)

    def __repr__(self) -> str:
        return f"Corpus({self.source!r}, {len(self.lines)} lines)"


_DEFAULT: Corpus | None = None


def resolve_corpus(spec: Any, model: Any = None, tokenizer: Any = None) -> Corpus:
    """A :class:`Corpus` from what a user passes: ``None`` (the shipped default), a Corpus,
    a path, a list of strings, or ``"model"`` (text the model generates; needs the model).

    Example::

        resolve_corpus(None).source        # 'repedit:wikitext2-test.raw.gz'
        resolve_corpus(["Some text ."]).sentences()
    """
    if spec is None:
        return Corpus.default()
    if isinstance(spec, Corpus):
        return spec
    if isinstance(spec, str) and spec == "model":
        if model is None or tokenizer is None:
            raise ValueError("corpus='model' needs the model and its tokenizer")
        return Corpus.from_model(model, tokenizer)
    if isinstance(spec, (str, os.PathLike)):
        return Corpus.from_file(spec)
    if isinstance(spec, (list, tuple)):
        return Corpus.from_texts(spec)
    raise TypeError(f"a corpus is None, 'model', a path, a list of strings or a Corpus; got {type(spec).__name__}")


def _sample_texts(model: Any, tokenizer: Any, n: int, max_new_tokens: int, seed: int, batch_size: int) -> list[str]:
    """The sentences (4+ words, one per line) of ``n`` sampled continuations of general openers
    (nucleus sampling, p = 0.95), deterministic for the seed."""
    import torch

    from repedit.positions import encode

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            openers = [_MODEL_OPENERS[(start + i) % len(_MODEL_OPENERS)] for i in range(min(batch_size, n - start))]
            batch = encode(tokenizer, openers, padding_side="left").to(device)
            out = model.generate(**batch.model_inputs(), do_sample=True, top_p=0.95, temperature=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad)
            new = tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
            for opener, cont in zip(openers, new):
                text = " ".join((opener + cont).split())
                texts.extend(s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4)
    logger.info("sampled %d sentences from the model for a corpus", len(texts))
    return texts
