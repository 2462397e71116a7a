"""EN->ZH caption translation: lookup table, tiny Marian model, table helper, Beam step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from zhclip.pipeline.core.config import ConfigError, SourceConfig, TranslateConfig
from zhclip.pipeline.core.reasons import REASON_UNTRANSLATED
from zhclip.pipeline.core.schema import (
    CAPTION,
    CAPTION_ORIG,
    KEY,
    METADATA_SCHEMA,
    REASON,
    REJECT_SCHEMA,
    SOURCE,
    STAGE,
    URL,
    conform,
)
from zhclip.pipeline.metadata.tiny_marian import build_tiny_marian, sample_sentences
from zhclip.pipeline.metadata.translate import (
    REJECTS_TAG,
    LookupTranslator,
    MarianTranslator,
    TranslateCaptions,
    TranslatorLoadError,
    clear_shared_translators,
    lookup_key,
    make_translator,
    read_translation_table,
    split_untranslated,
    translate_column,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_marian(tmp_path_factory.mktemp("marian") / "opus-mt-tiny")


@pytest.fixture(autouse=True)
def _fresh_shared_translators():
    clear_shared_translators()
    yield
    clear_shared_translators()


def _marian(path: Path, **kw) -> MarianTranslator:
    cfg = TranslateConfig(backend="marian", model=str(path), device="cpu", max_length=24, **kw)
    translator = make_translator(cfg)
    assert isinstance(translator, MarianTranslator)
    return translator


def _metadata(source: str, captions: list[str | None]) -> pa.Table:
    n = len(captions)
    return conform(
        pa.table(
            {
                KEY: [f"{source}/{i}" for i in range(n)],
                URL: [f"http://127.0.0.1/{source}/{i}.jpg" for i in range(n)],
                CAPTION: pa.array(captions, pa.string()),
                SOURCE: [source] * n,
            }
        ),
        METADATA_SCHEMA,
    )


class RecordingTranslator:
    """A real lookup translator that also records what it was asked, to check dedup."""

    def __init__(self, entries: dict[str, str]):
        self.inner = LookupTranslator(entries)
        self.calls: list[list[str]] = []

    def translate(self, sentences: list[str]) -> list[str | None]:
        self.calls.append(list(sentences))
        return self.inner.translate(sentences)


# --- module hygiene ---------------------------------------------------------


def test_module_imports_without_torch_or_transformers():
    code = (
        "import sys, zhclip.pipeline.metadata.translate; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --- lookup backend ---------------------------------------------------------


def _write_tsv(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_lookup_hits_misses_and_normalisation(tmp_path: Path):
    table = _write_tsv(
        tmp_path / "zh.tsv",
        "# english<TAB>chinese\n"
        "\n"
        "A man riding a horse.\t一个骑马的男人。\n"
        "  two   dogs playing \t 两只狗在玩耍 \n"
        "a man riding a horse.\t一个骑马的男人。\n",  # the same translation twice is fine
    )
    translator = make_translator(TranslateConfig(backend="lookup", table=table))
    assert isinstance(translator, LookupTranslator)
    assert len(translator) == 2
    got = translator.translate(
        ["a MAN riding a horse.", "Two dogs\tplaying", "a cat", "", "A man riding a horse"]
    )
    assert got == ["一个骑马的男人。", "两只狗在玩耍", None, None, None]


def test_lookup_key_collapses_whitespace_and_case():
    assert lookup_key("  A\tDog \n runs ") == "a dog runs"
    assert lookup_key("STRASSE") == lookup_key("straße")  # casefold, not lower


@pytest.mark.parametrize(
    "body, lineno",
    [
        ("a dog\t一只狗\nno tab on this line\n", 2),
        ("# c\n\na dog\t一只狗\na cat\t\n", 4),
        ("a dog\t一只狗\textra\n", 1),
        ("a dog\t一只狗\nA  Dog\t一条狗\n", 2),  # conflicting translations
    ],
)
def test_lookup_malformed_line_names_file_and_line(tmp_path: Path, body: str, lineno: int):
    path = _write_tsv(tmp_path / "bad.tsv", body)
    with pytest.raises(ValueError, match=rf"bad\.tsv:{lineno}:"):
        read_translation_table(path)


def test_lookup_missing_table_and_missing_setting(tmp_path: Path):
    with pytest.raises(TranslatorLoadError, match="not found"):
        make_translator(TranslateConfig(backend="lookup", table=str(tmp_path / "nope.tsv")))
    with pytest.raises(ConfigError, match="translate.table"):
        make_translator(TranslateConfig(backend="lookup"))


# --- Marian backend ---------------------------------------------------------


def test_marian_loads_by_path_and_returns_strings(tiny_marian: Path):
    translator = _marian(tiny_marian)
    en, _ = sample_sentences(6, seed=1)
    got = translator.translate(en + ["", "  "])
    assert all(isinstance(zh, str) and zh for zh in got[:6])
    assert got[6:] == [None, None]
    assert translator.device == "cpu"


def test_marian_translates_each_distinct_sentence_once(tiny_marian: Path):
    translator = _marian(tiny_marian, batch_size=2)
    en, _ = sample_sentences(5, seed=2)
    distinct = list(dict.fromkeys(en))
    messy = en + [f"  {s.replace(' ', '  ')} " for s in en] + en  # same sentences, whitespace noise
    first = translator.translate(messy)
    assert translator.sentences_generated == len(distinct)
    n = len(en)
    assert first[:n] == first[n : 2 * n] == first[2 * n :]

    again = translator.translate(list(reversed(en)))
    assert translator.sentences_generated == len(distinct)  # served from the cache
    assert translator.cache_hits == len(distinct)
    assert again == list(reversed(first[:n]))


def test_marian_cache_is_bounded(tiny_marian: Path):
    translator = MarianTranslator(str(tiny_marian), device="cpu", max_length=24, cache_size=2)
    en, _ = sample_sentences(12, seed=3)
    en = list(dict.fromkeys(en))[:4]
    translator.translate(en)
    assert len(translator._cache) == 2
    translator.translate(en[:1])  # evicted: generated again
    assert translator.sentences_generated == 5


@pytest.mark.parametrize("batch_size", [3, 32])
def test_marian_batched_equals_one_by_one(tiny_marian: Path, batch_size: int):
    en, _ = sample_sentences(20, seed=4)
    en = list(dict.fromkeys(en)) + ["hello", "an odd one with Ünïcode"]
    batched = _marian(tiny_marian, batch_size=batch_size).translate(en)
    single_translator = _marian(tiny_marian, batch_size=1)
    single = [single_translator.translate([s])[0] for s in en]
    assert batched == single
    assert len(set(batched)) > 3  # inputs decode differently, so a mix-up would show


def test_marian_too_long_input_is_untranslated(tiny_marian: Path):
    translator = MarianTranslator(str(tiny_marian), device="cpu", max_length=8)
    long = " ".join(["a man is riding a bike"] * 10)
    short, zh_long = translator.translate(["a cat.", long])
    assert isinstance(short, str)
    assert zh_long is None


def test_marian_load_error_is_clear(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TranslatorLoadError) as err:
        MarianTranslator(str(missing), device="cpu")
    msg = str(err.value)
    assert f"could not load Marian model '{missing}'" in msg
    assert "pass a local path or make the hub reachable" in msg
    assert isinstance(err.value, ConfigError)


def test_marian_bad_device(tiny_marian: Path):
    import torch

    with pytest.raises(ConfigError, match="not a torch device"):
        MarianTranslator(str(tiny_marian), device="gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            MarianTranslator(str(tiny_marian), device="cuda")


# --- tables -----------------------------------------------------------------


def test_translate_column_keeps_english_and_sends_distinct_sentences():
    translator = RecordingTranslator({"a dog.": "一只狗。", "a cat.": "一只猫。"})
    captions = ["a dog.", "A dog. ", "a cat.", "a horse.", None, "  ", "a dog."]
    table = _metadata("coco_zh", captions)
    out, failed = translate_column(table, translator)

    assert out.schema == METADATA_SCHEMA
    assert out.column(KEY).to_pylist() == table.column(KEY).to_pylist()
    assert out.column(CAPTION).to_pylist() == [
        "一只狗。",
        "一只狗。",
        "一只猫。",
        None,
        None,
        "  ",
        "一只狗。",
    ]
    assert out.column(CAPTION_ORIG).to_pylist() == [
        "a dog.",
        "A dog. ",
        "a cat.",
        "a horse.",
        None,
        None,
        "a dog.",
    ]
    assert failed == [3]
    # Whitespace variants are one sentence; case differences are kept distinct.
    assert translator.calls == [["a dog.", "A dog.", "a cat.", "a horse."]]

    kept, rejects = split_untranslated(out, failed)
    assert kept.num_rows + rejects.num_rows == table.num_rows
    assert rejects.schema == REJECT_SCHEMA
    assert rejects.to_pylist() == [
        {
            KEY: "coco_zh/3",
            SOURCE: "coco_zh",
            URL: "http://127.0.0.1/coco_zh/3.jpg",
            CAPTION: "a horse.",
            REASON: REASON_UNTRANSLATED,
            STAGE: "metadata",
            "matched": None,  # only blacklist hits carry matched text
        }
    ]


def test_translate_column_rejects_wrong_result_count():
    class Broken:
        def translate(self, sentences):
            return sentences[:-1]

    with pytest.raises(RuntimeError, match="returned 1 results for 2 sentences"):
        translate_column(_metadata("vg_zh", ["a", "b"]), Broken())


# --- Beam step --------------------------------------------------------------


def test_dofn_in_beam_pipeline_routes_misses_to_rejects(tmp_path: Path, tiny_marian: Path):
    tsv = _write_tsv(tmp_path / "vg.tsv", "red car\t红色的汽车\nblue sky\t蓝天\n")
    sources = [
        SourceConfig(
            name="vg_zh",
            kind="visual_genome",
            paths=["vg/region_descriptions.json"],
            translate=TranslateConfig(backend="lookup", table=tsv),
        ),
        SourceConfig(
            name="coco_zh",
            kind="coco",
            paths=["coco/captions_train2014.json"],
            translate=TranslateConfig(model=str(tiny_marian), device="cpu", max_length=24),
        ),
        SourceConfig(name="laion_zh", kind="laion", paths=["laion/*.parquet"]),
    ]
    vg = _metadata("vg_zh", ["Red  car", "green tree", "blue sky", "green tree"])
    coco_en, _ = sample_sentences(6, seed=7)
    coco = _metadata("coco_zh", coco_en)
    laion = _metadata("laion_zh", ["一只猫在沙发上睡觉", "夕阳下的海滩"])
    mixed = pa.concat_tables([_metadata("vg_zh", ["blue sky"]), _metadata("laion_zh", ["蓝天"])])

    def rows(label, tables):
        return tables | f"rows of {label}" >> beam.FlatMap(lambda t: t.to_pylist())

    with beam.Pipeline("DirectRunner") as p:
        out = (
            p
            | beam.Create([vg, coco, laion, mixed, METADATA_SCHEMA.empty_table()])
            | beam.ParDo(TranslateCaptions(sources)).with_outputs(REJECTS_TAG, main="kept")
        )
        kept = rows("kept", out.kept)
        rejects = rows("rejects", out[REJECTS_TAG])

        summary = kept | "summarise kept" >> beam.Map(
            lambda r: (
                r[KEY],
                r[CAPTION] if r[SOURCE] != "coco_zh" else "<marian>",
                r[CAPTION_ORIG],
            )
        )
        expected_kept = [
            ("vg_zh/0", "红色的汽车", "Red  car"),
            ("vg_zh/2", "蓝天", "blue sky"),
            ("vg_zh/0", "蓝天", "blue sky"),  # from the mixed table
            ("laion_zh/0", "一只猫在沙发上睡觉", None),
            ("laion_zh/1", "夕阳下的海滩", None),
            ("laion_zh/0", "蓝天", None),
        ] + [(f"coco_zh/{i}", "<marian>", en) for i, en in enumerate(coco_en)]
        assert_that(summary, equal_to(expected_kept), label="kept rows")

        coco_ok = (
            kept
            | beam.Filter(lambda r: r[SOURCE] == "coco_zh")
            | beam.Map(lambda r: isinstance(r[CAPTION], str) and r[CAPTION] != r[CAPTION_ORIG])
        )
        assert_that(coco_ok, equal_to([True] * len(coco_en)), label="coco translated")

        reject_summary = rejects | beam.Map(lambda r: (r[KEY], r[CAPTION], r[REASON], r[STAGE]))
        assert_that(
            reject_summary,
            equal_to(
                [
                    ("vg_zh/1", "green tree", REASON_UNTRANSLATED, "metadata"),
                    ("vg_zh/3", "green tree", REASON_UNTRANSLATED, "metadata"),
                ]
            ),
            label="rejects",
        )
