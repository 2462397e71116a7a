"""English -> Chinese translation of COCO and Visual Genome captions (stage 1).

The paper machine-translates these English caption sets before the Chinese
caption rules apply. A translated row keeps its English in ``caption_orig``;
a row the translator cannot handle becomes a reject with reason
``untranslated`` instead of disappearing.

Two backends share one small interface (:class:`Translator`):

* :class:`MarianTranslator`: a MarianMT model (Helsinki-NLP/opus-mt-en-zh by
  default, or any local folder with the same files), batched, deduplicated
  and cached, on the GPU when there is one. torch and transformers are
  imported inside it, so this module imports without them.
* :class:`LookupTranslator`: an ``english<TAB>chinese`` table, for
  pre-translated caption sets and for runs that must not load a model.

:class:`TranslateCaptions` is the Beam step: it takes pyarrow tables in
``METADATA_SCHEMA``, translates the tables of sources that ask for it, and
sends untranslatable rows to the ``rejects`` output.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from zhclip.pipeline.core.config import ConfigError, SourceConfig, TranslateConfig
from zhclip.pipeline.core.devices import resolve_device
from zhclip.pipeline.core.reasons import REASON_UNTRANSLATED, reject_table
from zhclip.pipeline.core.schema import (
    CAPTION,
    CAPTION_ORIG,
    KEY,
    SOURCE,
    URL,
)

log = logging.getLogger(__name__)

from zhclip.pipeline.core.tags import TAG_REJECTS as REJECTS_TAG  # noqa: E402

"""Tag of :class:`TranslateCaptions`' reject output (tables in REJECT_SCHEMA)."""

REJECT_STAGE = "metadata"

_WHITESPACE = re.compile(r"\s+")


class TranslatorLoadError(ConfigError):
    """A translation model or table named in the config cannot be used."""


def normalize_sentence(text: str) -> str:
    """Strip and collapse whitespace, so ``"a  dog\\n"`` and ``"a dog"`` are one sentence."""
    return _WHITESPACE.sub(" ", text).strip()


def lookup_key(text: str) -> str:
    """Key under which a lookup table matches an English sentence (case-insensitive)."""
    return normalize_sentence(text).casefold()


@runtime_checkable
class Translator(Protocol):
    """Translates English sentences to Chinese; ``None`` means "could not translate"."""

    def translate(self, sentences: list[str]) -> list[str | None]:
        """Return one result per input sentence, in input order."""
        ...


# --- lookup table backend ---------------------------------------------------


def read_translation_table(path: str) -> dict[str, str]:
    """Read an ``english<TAB>chinese`` UTF-8 file into ``{lookup_key: chinese}``.

    Lines starting with ``#`` and blank lines are skipped. Anything else must
    be exactly two non-empty tab-separated fields; a line that is not, or an
    English sentence listed twice with different translations, is an error
    naming the file and line, because guessing would silently change captions.
    """
    import fsspec

    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError as exc:
        raise TranslatorLoadError(
            f"translation table {path!r} not found; set translate.table to an existing "
            "english<TAB>chinese file"
        ) from exc
    except UnicodeDecodeError as exc:
        raise TranslatorLoadError(f"translation table {path!r} is not UTF-8: {exc}") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise TranslatorLoadError(
                f"{path}:{lineno}: expected 'english<TAB>chinese' with both fields "
                f"non-empty, got {line[:80]!r}"
            )
        key, chinese = lookup_key(fields[0]), fields[1].strip()
        if key in table and table[key] != chinese:
            raise TranslatorLoadError(
                f"{path}:{lineno}: {fields[0].strip()!r} is translated differently on "
                f"line {first_line[key]} ({table[key]!r} vs {chinese!r}); keep one"
            )
        table[key] = chinese
        first_line.setdefault(key, lineno)
    return table


class LookupTranslator:
    """Translation by exact lookup (after whitespace and case normalisation)."""

    def __init__(self, entries: Mapping[str, str]):
        self._table = {lookup_key(en): zh for en, zh in entries.items()}

    @classmethod
    def from_file(cls, path: str) -> LookupTranslator:
        self = cls({})
        self._table = read_translation_table(path)
        return self

    def __len__(self) -> int:
        return len(self._table)

    def translate(self, sentences: list[str]) -> list[str | None]:
        return [self._table.get(lookup_key(s)) if s else None for s in sentences]


# --- Marian backend ---------------------------------------------------------


class MarianTranslator:
    """A MarianMT model translating batches of distinct sentences, with an LRU cache.

    Captions repeat a lot (COCO has five per image, Visual Genome region
    phrases repeat across images), so each call translates every distinct
    sentence once and a bounded cache carries results across calls. Inputs
    longer than ``max_length`` tokens return ``None`` rather than a silently
    truncated translation; an empty output also returns ``None``.
    """

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 32,
        device: str = "auto",
        max_length: int = 128,
        num_beams: int | None = None,
        cache_size: int = 100_000,
        progress: bool = False,
    ):
        import torch
        from transformers import MarianMTModel, MarianTokenizer

        self.model_name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_beams = num_beams
        self.cache_size = cache_size
        self.progress = progress
        self.device = resolve_device(device, key="translate.device")
        try:
            self._tokenizer = MarianTokenizer.from_pretrained(model)
            self._model = MarianMTModel.from_pretrained(model)
        except Exception as exc:  # any loading failure gets one clear message
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TranslatorLoadError(
                f"could not load Marian model {model!r}: {cause}; "
                "pass a local path or make the hub reachable"
            ) from exc
        self._model.to(self.device).eval()
        self._torch = torch
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        # One translator may be shared by the threads of a Beam worker.
        self._lock = threading.Lock()
        self.sentences_generated = 0  # distinct sentences sent to the model
        self.batches_generated = 0
        self.cache_hits = 0

    def translate(self, sentences: list[str]) -> list[str | None]:
        normalized = [normalize_sentence(s) if s else "" for s in sentences]
        with self._lock:
            todo: list[str] = []
            seen: set[str] = set()
            for s in normalized:
                if not s or s in seen:
                    continue
                seen.add(s)
                if s in self._cache:
                    self._cache.move_to_end(s)
                    self.cache_hits += 1
                else:
                    todo.append(s)
            fresh = self._generate(todo)
            results: dict[str, str | None] = {s: self._cache[s] for s in seen if s not in fresh}
            results.update(fresh)
            for s, zh in fresh.items():
                self._cache[s] = zh
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [results[s] if s else None for s in normalized]

    def _generate(self, sentences: list[str]) -> dict[str, str | None]:
        """Translate distinct sentences in length-sorted batches (less padding)."""
        if not sentences:
            return {}
        lengths = {
            s: len(ids)
            for s, ids in zip(
                sentences, self._tokenizer(sentences, truncation=False)["input_ids"], strict=True
            )
        }
        out: dict[str, str | None] = {s: None for s in sentences if lengths[s] > self.max_length}
        fitting = sorted((s for s in sentences if lengths[s] <= self.max_length), key=lengths.get)
        batches = [
            fitting[i : i + self.batch_size] for i in range(0, len(fitting), self.batch_size)
        ]
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"translate {self.model_name}", unit="batch")
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.max_length}
        if self.num_beams is not None:
            gen_kwargs["num_beams"] = self.num_beams
        for batch in batches:
            enc = self._tokenizer(batch, return_tensors="pt", padding=True).to(self.device)
            with self._torch.inference_mode():
                ids = self._model.generate(**enc, **gen_kwargs)
            decoded = self._tokenizer.batch_decode(ids, skip_special_tokens=True)
            for s, zh in zip(batch, decoded, strict=True):
                out[s] = zh.strip() or None
            self.sentences_generated += len(batch)
            self.batches_generated += 1
        return out


def make_translator(cfg: TranslateConfig) -> Translator:
    """Build the translator a source's ``translate:`` block asks for."""
    if cfg.backend == "lookup":
        if not cfg.table:
            raise ConfigError("translate.backend is 'lookup' but translate.table is not set")
        return LookupTranslator.from_file(cfg.table)
    if cfg.backend == "marian":
        return MarianTranslator(
            cfg.model,
            batch_size=cfg.batch_size,
            device=cfg.device,
            max_length=cfg.max_length,
            num_beams=cfg.num_beams,
            cache_size=cfg.cache_size,
        )
    raise ConfigError(f"unknown translate.backend {cfg.backend!r}; use marian or lookup")


# --- tables -----------------------------------------------------------------


def translate_column(table: pa.Table, translator: Translator) -> tuple[pa.Table, list[int]]:
    """Translate the English ``caption`` column of a METADATA_SCHEMA table.

    Returns the table with ``caption_orig`` = the English and ``caption`` = the
    Chinese, and the row indices the translator could not translate (their
    ``caption`` is null). Rows whose English caption is null or blank are left
    as they are and are not counted as untranslated: the caption rules reject
    them as empty captions, the reason that says what is wrong with them.
    Each distinct sentence is sent to the translator once.
    """
    english: list[str | None] = table.column(CAPTION).to_pylist()
    distinct = list(dict.fromkeys(normalize_sentence(e) for e in english if e and e.strip()))
    results = translator.translate(distinct) if distinct else []
    if len(results) != len(distinct):
        raise RuntimeError(
            f"translator {type(translator).__name__} returned {len(results)} results "
            f"for {len(distinct)} sentences"
        )
    chinese_of = {
        en: (zh.strip() or None) if isinstance(zh, str) else None
        for en, zh in zip(distinct, results, strict=True)
    }
    captions: list[str | None] = []
    originals: list[str | None] = []
    failed: list[int] = []
    for i, en in enumerate(english):
        if not en or not en.strip():
            captions.append(en)
            originals.append(None)
            continue
        zh = chinese_of[normalize_sentence(en)]
        if zh is None:
            failed.append(i)
        captions.append(zh)
        originals.append(en)
    table = table.set_column(
        table.schema.get_field_index(CAPTION),
        table.schema.field(CAPTION),
        pa.array(captions, pa.string()),
    )
    table = table.set_column(
        table.schema.get_field_index(CAPTION_ORIG),
        table.schema.field(CAPTION_ORIG),
        pa.array(originals, pa.string()),
    )
    return table, failed


def split_untranslated(
    translated: pa.Table, failed: Sequence[int], stage: str = REJECT_STAGE
) -> tuple[pa.Table, pa.Table]:
    """Split :func:`translate_column`'s output into (kept rows, reject table).

    Reject rows carry the English caption, the only text those rows have.
    """
    if not failed:
        return translated, reject_table([], [], [], [], [], stage)
    mask = [True] * translated.num_rows
    for i in failed:
        mask[i] = False
    kept = translated.filter(pa.array(mask))
    bad = translated.take(pa.array(failed, pa.int64()))
    rejects = reject_table(
        bad.column(KEY),
        bad.column(SOURCE),
        bad.column(URL),
        bad.column(CAPTION_ORIG),
        [REASON_UNTRANSLATED] * bad.num_rows,
        stage,
    )
    return kept, rejects


# --- Beam step --------------------------------------------------------------

# Translators shared by every DoFn instance in a worker process: a Beam worker
# runs several threads, and one copy of a model per thread wastes (GPU) memory.
_SHARED: dict[str, Translator] = {}
_SHARED_LOCK = threading.Lock()


def shared_translator(cfg: TranslateConfig) -> Translator:
    """The process-wide translator for ``cfg``, built on first use."""
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    with _SHARED_LOCK:
        if key not in _SHARED:
            log.info(
                "loading %s translator %s",
                cfg.backend,
                cfg.model if cfg.backend == "marian" else cfg.table,
            )
            _SHARED[key] = make_translator(cfg)
        return _SHARED[key]


def clear_shared_translators() -> None:
    """Drop the process-wide translators (tests, or to free a model's memory)."""
    with _SHARED_LOCK:
        _SHARED.clear()


def _translate_configs(
    sources: Iterable[SourceConfig] | Mapping[str, TranslateConfig | None],
) -> dict[str, TranslateConfig]:
    if isinstance(sources, Mapping):
        return {name: cfg for name, cfg in sources.items() if cfg is not None}
    return {src.name: src.translate for src in sources if src.translate is not None}


def _by_source(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Yield (source, rows) pairs; a table is normally one source, but mixing is tolerated."""
    names = pc.unique(table.column(SOURCE)).to_pylist()
    if len(names) == 1:
        yield names[0], table
        return
    for name in names:
        yield name, table.filter(pc.equal(table.column(SOURCE), name))


class TranslateCaptions(beam.DoFn):
    """Translate the captions of sources with a ``translate:`` block.

    Elements are pyarrow tables in METADATA_SCHEMA. Tables of other sources
    pass through unchanged. Untranslatable rows go to the ``rejects`` tagged
    output (REJECT_SCHEMA tables, reason ``untranslated``); use it as
    ``beam.ParDo(TranslateCaptions(cfg.sources)).with_outputs(REJECTS_TAG, main="kept")``.
    Translators are built lazily, once per worker process and config, so a
    worker never loads a model for a source it does not see.
    """

    def __init__(self, sources: Iterable[SourceConfig] | Mapping[str, TranslateConfig | None]):
        self._configs = _translate_configs(sources)
        self._translators: dict[str, Translator] = {}

    def setup(self) -> None:
        self._translators = {}
        self._translated = beam.metrics.Metrics.counter("translate", "rows_translated")
        self._untranslated = beam.metrics.Metrics.counter("translate", "rows_untranslated")

    def _translator(self, source: str) -> Translator:
        if source not in self._translators:
            self._translators[source] = shared_translator(self._configs[source])
        return self._translators[source]

    def process(self, table: pa.Table) -> Iterator[Any]:
        if table.num_rows == 0:
            return
        for source, rows in _by_source(table):
            if source not in self._configs:
                yield rows
                continue
            translated, failed = translate_column(rows, self._translator(source))
            kept, rejects = split_untranslated(translated, failed)
            self._translated.inc(kept.num_rows)
            self._untranslated.inc(rejects.num_rows)
            if kept.num_rows:
                yield kept
            if rejects.num_rows:
                yield beam.pvalue.TaggedOutput(REJECTS_TAG, rejects)
