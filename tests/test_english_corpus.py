"""The `english` corpus: each source's parser on small files written here, the windowing bounds,
exact deduplication, the split that holds out whole documents, and (slow, when Debian's packages
are installed) the real corpus."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgekd import corpus
from edgekd import data as data_module
from edgekd.corpus import WINDOW_CHARS, WINDOW_SENTENCES, WINDOW_WORDS, sentences, windows
from edgekd.data import _Split, _split_by_document, load_data
from edgekd.errors import BadInput

# --- small files in each source's format ---

WORDNET_LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def wordnet_line(offset: int, lemma: str, gloss: str) -> str:
    return f"{offset:08d} 05 n 01 {lemma} 0 001 @ 00001740 n 0000 | {gloss}  \n"


def write_wordnet(folder: Path, synsets_per_part: int = 1) -> Path:
    folder.mkdir()
    for part in ("noun", "verb", "adj", "adv"):
        lines = [wordnet_line(1000 + i, f"{part}{i}", f'a {part} meaning number {i} in this test; '
                              f'"the {part} example number {i} reads well"') for i in range(synsets_per_part)]
        (folder / f"data.{part}").write_text(WORDNET_LICENCE + "".join(lines))
    return folder


def base64_number(value: int) -> str:
    """dictd's index numbers: base-64 digits, most significant first."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = ""
    while True:
        digits = alphabet[value % 64] + digits
        value //= 64
        if not value:
            return digits


def write_dictd(path: Path, entries: dict[str, str]) -> Path:
    """A dictd database: NAME.dict.dz (gzip) and NAME.index (headword, byte offset, byte length)."""
    body, index = b"", []
    for headword, text in {"00-database-info": "This file was converted by dictfmt.\n", **entries}.items():
        encoded = text.encode()
        index.append(f"{headword}\t{base64_number(len(body))}\t{base64_number(len(encoded))}\n")
        body += encoded
    path.write_bytes(gzip.compress(body))
    path.with_name(path.name.removesuffix(".dict.dz") + ".index").write_text("".join(sorted(index)))
    return path


GCIDE_ENTRY = """Hereditary \\He*red"i*ta*ry\\, a. [L. hereditarius, fr. hereditas
   heirship, cf. F. h['e]r['e]ditaire. See {Heir}.]
   1. Descended, or capable of descending, from an ancestor to
      an heir at law; as, an hereditary estate or crown.
      [1913 Webster]

   2. Transmitted from a parent to a child; as, hereditary pride.

   Syn: Ancestral; patrimonial; inheritable.
        [1913 Webster]

   Note: A corporeal hereditament is visible and tangible, and an
         incorporeal one is not. See {Hereditament}.
         [1913 Webster]

         Herein is my Father glorified, that ye bear much fruit.
                                                  --John xv. 8.
   [1913 Webster]

   3. occurring among members of a family usually by heredity.
      [WordNet 1.5]
"""


def lzw_compress(data: bytes, max_bits: int = 16) -> bytes:
    """Unix `compress` (block mode) without its header: 9-bit codes growing a bit when the table
    outgrows them, each width's codes in groups of that many bytes, a group padded when it grows."""
    table = {bytes([i]): i for i in range(256)}
    out, group, width, free = bytearray(), [], 9, 257

    def emit(code: int) -> None:
        nonlocal width
        group.append(code)
        if len(group) == 8 or free > (1 << width) - 1:
            value = sum(c << (width * i) for i, c in enumerate(group))
            out.extend(value.to_bytes(width, "little"))
            group.clear()
            if free > (1 << width) - 1 and width < max_bits:
                width += 1

    word = b""
    for byte in data:
        longer = word + bytes([byte])
        if longer in table:
            word = longer
            continue
        emit(table[word])
        if free < 1 << max_bits:
            table[longer], free = free, free + 1
        word = bytes([byte])
    emit(table[word])
    if group:  # the last, partial group: only the bytes its codes reach
        value = sum(c << (width * i) for i, c in enumerate(group))
        out.extend(value.to_bytes((width * len(group) + 7) // 8, "little"))
    return bytes(out)


def write_brs(path: Path, text: bytes, window_bytes: int = 4096) -> Path:
    """A Bible Retrieval System data file: header, window table, then `compress`-ed windows."""
    windows_packed = [lzw_compress(text[i:i + window_bytes]) for i in range(0, len(text), window_bytes)]
    header = b"EC02" + b"Test Bible".ljust(80, b"\0") + struct.pack(">II", window_bytes, len(windows_packed))
    start = len(header) + 4 * (len(windows_packed) + 1) + 3
    starts = [start]
    for packed in windows_packed:
        starts.append(starts[-1] + len(packed))
    path.write_bytes(header + struct.pack(f">{len(starts)}I", *starts) + b"\x1f\x9d\x90" + b"".join(windows_packed))
    return path


def kjv_text(books: tuple[str, ...] = ("Ge", "Exo", "1Sm"), verses: int = 40) -> bytes:
    lines = ["Holy Bible, Authorized (King James) Version.  Textfile 930105."]
    for book in books:
        lines += [f"{book}1:{v} And in the {v} day of {book} the people went up unto the city of the {book}."
                  for v in range(1, verses + 1)]
    return ("\n".join(lines) + "\n").encode()


def write_fortunes(folder: Path, files: int = 1, records: int = 3) -> Path:
    folder.mkdir()
    for f in range(files):
        quotes = [f"Quotation {r} of file {f} says that\nthe night is dark and full of stars.\n\t\t-- Some One"
                  for r in range(records)]
        (folder / f"file{f}").write_text("\n%\n".join(quotes) + "\n%\n")
        (folder / f"file{f}.dat").write_bytes(b"\0\0\x02binary index")
        (folder / f"file{f}.u8").write_text("the same quotations in UTF-8, not read a second time")
    return folder


# --- the parsers ---

def test_wordnet_glosses_without_offsets_or_pointers(tmp_path):
    folder = write_wordnet(tmp_path / "wordnet", synsets_per_part=corpus.SYNSET_BLOCK + 1)
    units = list(corpus._wordnet_units(folder))
    assert units[:2] == [("noun-0", "a noun meaning number 0 in this test"),
                         ("noun-0", "the noun example number 0 reads well")]
    assert ("noun-1", "a noun meaning number 100 in this test") in units  # the next block of synsets
    assert len(units) == 4 * 2 * (corpus.SYNSET_BLOCK + 1)
    assert not any("LICENSEE" in text or "@" in text or "00001740" in text for _, text in units)


def test_gcide_keeps_prose_drops_markup_and_wordnet_paragraphs(tmp_path):
    path = write_dictd(tmp_path / "gcide.dict.dz", {"Hereditary": GCIDE_ENTRY})
    texts = [" ".join(text.split()) for _, text in corpus._gcide_units(path)]
    assert texts == [
        "Descended, or capable of descending, from an ancestor to an heir at law; as, an hereditary estate or crown.",
        "Transmitted from a parent to a child; as, hereditary pride.",
        "A corporeal hereditament is visible and tangible, and an incorporeal one is not.",
        "Herein is my Father glorified, that ye bear much fruit.",
    ]  # no headword, pronunciation, etymology, Syn: list, author or the [WordNet 1.5] sense
    assert {document for document, _ in corpus._gcide_units(path)} == {"he"}


def test_devil_and_jargon_entries_lose_their_headwords(tmp_path):
    devil = write_dictd(tmp_path / "devil.dict.dz", {
        "HEARSE": "HEARSE, n.  Death's baby-carriage, said the _devil_ himself.\n",
        "HEAT": "HEAT, n.\n\n    Heat, says Professor Tyndall, is a mode\n    Of motion.\n"
                "                                                Gorton Swope\n"})
    assert [" ".join(t.split()) for _, t in corpus._devil_units(devil) if t.strip()] == [
        "Death's baby-carriage, said the devil himself.", "Heat, says Professor Tyndall, is a mode Of motion."]
    jargon = write_dictd(tmp_path / "jargon.dict.dz", {
        "chase pointers": "chase pointers\n\n\n    1. vi. To go through multiple levels of {indirection}.\n\n"
                          "    2. [Cambridge] The process of going through a {core dump}.\n"})
    assert [(d, " ".join(t.split())) for d, t in corpus._jargon_units(jargon)] == [
        ("ch", "To go through multiple levels of indirection."), ("ch", "The process of going through a core dump.")]


def test_kjv_verses_from_the_compressed_bible_file(tmp_path):
    text = kjv_text()
    path = write_brs(tmp_path / "bible.data", text)
    assert corpus._brs_text(path).encode("latin-1") == text  # several windows, codes of 9 to 11 bits
    units = list(corpus._kjv_units(path))
    assert len(units) == 3 * 40
    assert units[0] == ("Ge", "And in the 1 day of Ge the people went up unto the city of the Ge.")
    assert {book for book, _ in units} == {"Ge", "Exo", "1Sm"}


def test_a_file_that_is_not_a_bible_data_file_is_bad_input(tmp_path):
    path = tmp_path / "bible.data"
    path.write_bytes(b"plain text, no header")
    with pytest.raises(BadInput, match="not a Bible Retrieval System data file"):
        corpus._brs_text(path)


def test_fortunes_records_without_authors_one_document_per_file(tmp_path):
    folder = write_fortunes(tmp_path / "fortunes", files=2, records=2)
    units = [(d, " ".join(t.split())) for d, t in corpus._fortunes_units(folder) if t.strip()]
    assert units[0] == ("file0", "Quotation 0 of file 0 says that the night is dark and full of stars.")
    assert {d for d, _ in units} == {"file0", "file1"} and len(units) == 4


# --- windowing ---

def test_windows_hold_1_to_4_sentences_of_5_to_100_words():
    low, high = WINDOW_WORDS
    prose = " ".join(f"Sentence {i} has " + "quite a few words " * (i % 7) + "and ends here." for i in range(40))
    clauses = "; ".join("a clause of some eight words in it" for _ in range(30)) + "."  # 240 words
    run_on = " ".join(["word"] * (high + 1)) + "."
    found = windows(prose + " " + clauses + " " + run_on + " Too short.")
    assert found and all(low <= len(w.split()) <= high and len(w) <= WINDOW_CHARS for w in found)
    assert all(1 <= len(sentences(w)) <= WINDOW_SENTENCES for w in found)
    assert any("a clause of some eight words" in w for w in found)  # a long sentence is cut at ';'
    assert not any("word word word" in w for w in found)  # a clause still over 100 words is dropped
    assert found[0].startswith("Sentence 0 has")
    assert windows("Too short to keep.") == []


def test_sentences_do_not_end_at_common_abbreviations():
    assert sentences("Mr. Smith met Dr. Jones in St. Paul. They spoke.") == [
        "Mr. Smith met Dr. Jones in St. Paul.", "They spoke."]


def test_normalised_text_is_one_line_of_ascii_quotes():
    assert corpus.normalise_text("\u201cSo\u201d  it\tgoes,\nB\bBold\x07 and \u2018done\u2019") == \
        "\"So\" it goes, Bold and 'done'"


# --- the spec: dedupe, provenance, the split ---

def english_spec(tmp_path: Path, sources: dict[str, tuple[str, Path]], **extra: str) -> Path:
    lines = ["name: english-test", "loader: text-english", "task: embedding", "options:", "  sources:"]
    for name, (package, path) in sources.items():
        lines += [f"    {name}:", f"      package: {package}", "      license: test licence", f"      path: {path}"]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    spec = tmp_path / "english-test.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def test_spec_dedupes_exactly_and_records_each_source(tmp_path):
    fortunes = write_fortunes(tmp_path / "fortunes", files=6, records=4)
    (fortunes / "zz-copy").write_text("Quotation 0 of file 0 says that   the night\nis dark and full of stars.\n%\n")
    wordnet = write_wordnet(tmp_path / "wordnet", synsets_per_part=2 * corpus.SYNSET_BLOCK)
    sources = {"wordnet": ("wordnet-base", wordnet), "fortunes": ("fortunes", fortunes)}
    data = load_data(english_spec(tmp_path, sources))
    every = np.concatenate([data.x_train, data.x_val, data.x_test])
    assert len(every) == len(set(every)) == 4 * 2 * 2 * corpus.SYNSET_BLOCK + 6 * 4  # no later copy
    recorded = data.provenance["sources"]
    assert recorded["fortunes"]["texts"] == 24 and recorded["fortunes"]["documents"] == 6
    assert recorded["wordnet"]["package"] == "wordnet-base" and recorded["wordnet"]["path"] == str(wordnet)
    assert len(recorded["wordnet"]["sha256"]) == 64 and recorded["wordnet"]["license"] == "test licence"
    assert data.test_sources is not None and len(data.test_sources) == len(data.x_test)
    assert set(data.test_sources) == {"wordnet", "fortunes"}
    fortunes_test = data.x_test[data.test_sources == "fortunes"]
    assert all(text.startswith("Quotation") for text in fortunes_test)
    again = load_data(english_spec(tmp_path, sources))
    assert again.sha256 == data.sha256 and np.array_equal(again.x_test, data.x_test)


def test_max_samples_keeps_each_text_with_its_source(tmp_path):
    fortunes = write_fortunes(tmp_path / "fortunes", files=6, records=10)
    wordnet = write_wordnet(tmp_path / "wordnet", synsets_per_part=3 * corpus.SYNSET_BLOCK)
    spec = english_spec(tmp_path, {"wordnet": ("wordnet-base", wordnet), "fortunes": ("fortunes", fortunes)},
                        max_samples="400")
    data = load_data(spec)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 400
    assert [text.startswith("Quotation") for text in data.x_test] == list(data.test_sources == "fortunes")


def test_a_missing_package_is_named_with_its_install_command(tmp_path):
    wordnet = write_wordnet(tmp_path / "wordnet")
    spec = english_spec(tmp_path, {"wordnet": ("wordnet-base", wordnet),
                                   "kjv": ("bible-kjv-text", tmp_path / "absent" / "bible.data")})
    with pytest.raises(BadInput, match=r"bible-kjv-text not installed \(install with: sudo apt-get install -y "
                                       r"bible-kjv-text\)"):
        load_data(spec)


def test_an_unknown_source_or_field_names_the_key(tmp_path):
    spec = english_spec(tmp_path, {"poetry": ("poems", tmp_path)})
    with pytest.raises(BadInput, match="options.sources.poetry': no such source"):
        load_data(spec)
    spec.write_text(spec.read_text().replace("      license: test licence\n", ""))
    spec.write_text(spec.read_text().replace("poetry", "wordnet"))
    with pytest.raises(BadInput, match="options.sources.wordnet.license'"):
        load_data(spec)


def test_split_by_document_keeps_documents_whole_and_every_source_held_out():
    rng = np.random.default_rng(1)
    sources = np.array(["big"] * 3000 + ["small"] * 300, dtype=object)
    documents = np.array([f"d{i}" for i in rng.integers(0, 200, 3000)] + [f"f{i % 12}" for i in range(300)],
                         dtype=object)
    split = _Split(seed=3, val_fraction=0.1, test_fraction=0.15)
    train, val, test = _split_by_document(sources, documents, split, "spec")
    assert sorted(np.concatenate([train, val, test])) == list(range(3300))
    keyed = sources + "/" + documents
    seen = [set(keyed[part]) for part in (train, val, test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    for name in ("big", "small"):
        assert all((sources[part] == name).any() for part in (train, val, test))
    assert 0.13 < len(test) / 3300 < 0.2 and 0.07 < len(val) / 3300 < 0.16
    again = _split_by_document(sources, documents, split, "spec")
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    other = _split_by_document(sources, documents, _Split(seed=4, val_fraction=0.1, test_fraction=0.15), "spec")
    assert not np.array_equal(np.sort(other[2]), np.sort(test))


def test_a_source_of_too_few_documents_cannot_be_split():
    sources = np.array(["one"] * 20, dtype=object)
    documents = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    with pytest.raises(BadInput, match="source 'one' has 2 document"):
        _split_by_document(sources, documents, _Split(), "spec")


# --- the real corpus ---

def _english_installed() -> list[str]:
    """The packages of calibration/english.yaml that are missing here."""
    import yaml

    spec = yaml.safe_load((data_module.CALIBRATION_DIR / "english.yaml").read_text())
    return [s["package"] for s in spec["options"]["sources"].values() if not Path(s["path"]).exists()]


@pytest.mark.slow
@pytest.mark.skipif(bool(_english_installed()), reason="Debian packages of the english corpus are not installed "
                                                        "(make test installs them as root, .ci/system-deps)")
def test_real_english_corpus(monkeypatch):
    seen = {}
    real_split = data_module._split_by_document

    def spy(sources, documents, split, source):
        seen.update(sources=sources, documents=documents, parts=real_split(sources, documents, split, source))
        return seen["parts"]

    monkeypatch.setattr(data_module, "_split_by_document", spy)
    data = load_data("english")
    every = len(data.x_train) + len(data.x_val) + len(data.x_test)
    assert every >= 300_000 and data.task == "embedding" and data.is_text
    keyed = seen["sources"] + "/" + seen["documents"]
    train, val, test = (set(keyed[part]) for part in seen["parts"])
    assert not (train & val or train & test or val & test)
    sources = data.provenance["sources"]
    assert set(sources) == {"wordnet", "gcide", "kjv", "fortunes", "devil", "jargon"}
    assert sum(s["texts"] for s in sources.values()) == every
    assert all(s["package"] and s["license"] and s["path"] and len(s["sha256"]) == 64 for s in sources.values())
    assert set(data.test_sources) == set(sources)
    assert sources["kjv"]["documents"] == 66  # the books of the Bible
    verses = corpus._brs_text(Path(sources["kjv"]["path"])).splitlines()
    assert sum(bool(corpus._KJV_VERSE.match(line)) for line in verses) == 31102
