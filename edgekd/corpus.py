"""The `english` corpus: real English prose, offline, from Debian packages read where they install.

Six sources (WordNet glosses, GCIDE's Webster's 1913 senses, the King James Bible, fortune-mod's
quotations, The Devil's Dictionary and the Jargon File) give about 375k texts for distilling text
encoders with no download and no copy in this repo: each package's files are parsed in their own
format (dictd databases, WordNet data files, the Bible Retrieval System's LZW windows), cut into
windows of a few sentences an encoder reads whole, kept when prose, and deduplicated exactly across
sources. Every text keeps its source and a document (a Bible book, a fortunes file, a block of
synsets, the entries sharing two initial letters), so `edgekd.data` can hold out whole documents
and report held-out figures per source. This module reads and parses only: the arrays, hashes and
split are `edgekd.data`'s.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekd.errors import BadInput
from edgekd.targets import read_bounded

MAX_SOURCE_BYTES = 64 << 20
"""Largest file of a source (64 MiB), on disk and once inflated: GCIDE, the largest, inflates to
38 MiB; a bigger file is not the package's."""

ENGLISH_MAX_TEXTS = 1_000_000
"""Most texts the `english` loader keeps: its sources give 375k (about 270 MB loaded); a source
that yields far more is not the file its spec describes."""

WINDOW_WORDS = (5, 100)
"""Words in one `english` text: fewer is a label, not prose; more passes the few hundred tokens an
encoder reads."""

WINDOW_CHARS = 1_000
"""Longest `english` text in characters (100 words of English are about 600): a longer one is a
run of digits or a URL, and the bound keeps ENGLISH_MAX_TEXTS texts within about 1 GB."""

WINDOW_SENTENCES = 4
"""Most sentences in one `english` text: long prose becomes several texts rather than one the
encoder would truncate."""

MIN_PROSE_FRACTION = 0.8
"""Least share of letters, digits and spaces in a text: ASCII art, tables and leftover markup
fall below."""

_DICTD_METADATA = re.compile(r"00-?[a-z]")  # headwords of dictd's entries about the database (URL, licence)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_BRACKETED = re.compile(r"\[[^\]]*\]")

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[\"'(]?[A-Z0-9])")
_ABBREVIATION = re.compile(r"(?:^|\s)(?:[A-Z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Rev|Gen|Capt|Mt|No|vs|viz|cf|e\.g|i\.e|ca)\.$")
_CLAUSE_END = re.compile(r"(?<=[;:])\s+")
_UNPRINTABLE = re.compile(r".?\x08|[\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # with nroff's overstrikes (c, backspace, c)
_NOT_PROSE = re.compile(r"[^\w ]|_")
_UNKNOWN_CHARACTER = re.compile(r"\?[\w;?]")  # GCIDE writes '?' for a Greek or Old English letter
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- "})


def normalise_text(text: str) -> str:
    """One line of plain text: typographic quotes as ASCII, overstrikes and control characters
    dropped, whitespace runs as one space; exact duplicates are found after this."""
    if not text.isascii():
        text = text.translate(_TYPOGRAPHIC)
    return " ".join(_UNPRINTABLE.sub("", text).split())


def sentences(text: str) -> list[str]:
    """`text` cut after '.', '!' or '?' before a capital, not after a common abbreviation."""
    merged: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if merged and _ABBREVIATION.search(merged[-1]):
            merged[-1] += " " + piece
        else:
            merged.append(piece)
    return merged


def windows(text: str) -> list[str]:
    """`text` as consecutive windows of 1-WINDOW_SENTENCES sentences, WINDOW_WORDS words and at most
    WINDOW_CHARS characters. A sentence over the word limit is cut at ';' and ':', and a clause still
    over it is dropped."""
    low, high = WINDOW_WORDS
    units: list[tuple[str, int]] = []
    for sentence in sentences(normalise_text(text)):
        pieces = [sentence] if len(sentence.split()) <= high else _CLAUSE_END.split(sentence)
        units.extend((piece, len(piece.split())) for piece in pieces if piece)
    found: list[str] = []
    current: list[str] = []
    count = 0
    for unit, words in units + [("", high + 1)]:  # the sentinel flushes the last window
        if current and (len(current) == WINDOW_SENTENCES or count + words > high):
            window = " ".join(current)
            if count >= low and len(window) <= WINDOW_CHARS:
                found.append(window)
            current, count = [], 0
        if words <= high:
            current.append(unit)
            count += words
    return found


def is_prose(text: str) -> bool:
    """Mostly letters, digits and spaces, and no '?' standing for a character the source could
    not encode."""
    letters = len(text) - len(_NOT_PROSE.findall(text))
    return letters >= MIN_PROSE_FRACTION * len(text) and not _UNKNOWN_CHARACTER.search(text)


def _read_text(path: Path, *, kind: str) -> str:
    """A file of the corpus as text: UTF-8, else Latin-1 (older Debian text files)."""
    data = read_bounded(path, max_bytes=MAX_SOURCE_BYTES, kind=kind)
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _gunzip_bounded(path: Path, *, kind: str) -> bytes:
    """A gzip (or dictzip) file's content, refused past MAX_SOURCE_BYTES before more is inflated."""
    packed = read_bounded(path, max_bytes=MAX_SOURCE_BYTES, kind=kind)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(packed, MAX_SOURCE_BYTES + 1)
    except zlib.error as err:
        raise BadInput(f"{path}: not a readable gzip file: {err}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise BadInput(f"{path}: inflates past {MAX_SOURCE_BYTES >> 20} MiB; {kind} may be at most that")
    return data


SYNSET_BLOCK = 100
"""Synsets in one WordNet document of the `english` split."""

_QUOTED = re.compile(r'"([^"]+)"')


def _wordnet_units(directory: Path) -> Iterator[tuple[str, str]]:
    """(document, text) of WordNet's glosses: each synset's definition and each quoted example,
    without its offsets, lemmas and pointers. A document is a block of SYNSET_BLOCK consecutive
    synsets of one part-of-speech file (neighbours share a lexicographer file, so a topic)."""
    for part in ("noun", "verb", "adj", "adv"):
        body = _read_text(directory / f"data.{part}", kind="a WordNet data file")
        synsets = (line for line in body.splitlines() if line[:1].isdigit() and " | " in line)
        for number, line in enumerate(synsets):
            gloss = line.split(" | ", 1)[1]
            document = f"{part}-{number // SYNSET_BLOCK}"
            yield document, gloss.split('"', 1)[0].strip().rstrip(";")
            for example in _QUOTED.findall(gloss):
                yield document, example


def _dictd_entries(path: Path) -> Iterator[tuple[str, str]]:
    """(headword, text) of each entry of a dictd database (`NAME.dict.dz` beside `NAME.index`, whose
    lines are headword, base64 byte offset and base64 byte length), each entry once, in file order."""
    data = _gunzip_bounded(path, kind="a dictd database")
    index = _read_text(path.with_name(path.name.removesuffix(".dict.dz") + ".index"), kind="a dictd index")
    entries: dict[tuple[int, int], str] = {}
    for line in index.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or _DICTD_METADATA.match(fields[0]):
            continue
        entries.setdefault((_base64_number(fields[1]), _base64_number(fields[2])), fields[0])
    for (offset, length), headword in sorted(entries.items()):
        yield headword, data[offset:offset + length].decode(errors="replace")


_BASE64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _base64_number(digits: str) -> int:
    """dictd's index numbers: base-64 digits, most significant first."""
    value = 0
    for digit in digits:
        value = value * 64 + _BASE64.get(digit, 0)
    return value


def _headword_block(headword: str) -> str:
    """A dictionary's document: the entries whose headwords share their first two letters, so the
    entries of one word (and most of its derivatives) stay in one split."""
    letters = "".join(c for c in headword.lower() if c.isalpha())
    return letters[:2] or "#"


_GCIDE_TAG = re.compile(r"\[[^\]]*(?:Webster|WordNet|PJC|Century|RDH|AS)[^\]]*\]\s*$")
_GCIDE_HEAD = re.compile(r"^(?:[^\\]*\\[^\\]*\\[,\s]*)+")
_GCIDE_LEAD = re.compile(r"^(?:\s+|[,;.&]|[a-z]{1,5}\.|\d+\.|(?:or|and)\s|\[[^\]]*\]|\([^)]*\)|\{[^}]*\})")
_GCIDE_AUTHOR = re.compile(r"\s--(?=[A-Z]).*$")  # a quotation's author and work: --Shak., --Bp. Hall.
_GCIDE_SEE = re.compile(r"\bSee (?:also |under )?\{[^}]*\}[^.]*\.")
_GCIDE_ACCENT = re.compile(r"\[[`'\"^~=.,*-]?([a-z]{1,5})[\^~]?\]")  # ['e] e-acute, [=a] a-macron, [imac] i-macron


def _gcide_drop_lead(paragraph: str) -> str:
    """A GCIDE paragraph from its first word of prose: grammar (n., v. t., pl. {Forms}), etymology
    [...], field labels (Law) and sense numbers dropped, and the rest of an etymology whose brackets
    nest (its closing ']' with no '[' before it)."""
    while True:
        lead = _GCIDE_LEAD.match(paragraph)
        close = paragraph.find("]")
        if lead and lead.end():
            paragraph = paragraph[lead.end():]
        elif close != -1 and "[" not in paragraph[:close]:
            paragraph = paragraph[close + 1:]
        else:
            return paragraph


def _gcide_units(path: Path) -> Iterator[tuple[str, str]]:
    """(document, text) of GCIDE's senses, notes and quotations: the headword, pronunciation,
    grammar and etymology dropped, and the paragraphs GCIDE took from WordNet (a source of its own
    here) left out; cross-references, labels and quotation authors removed."""
    for headword, entry in _dictd_entries(path):
        document = _headword_block(headword)
        for paragraph in _PARAGRAPH_BREAK.split(entry.strip("\n")):
            if paragraph[:1].isalnum():  # a headword line, at column 0: headwords, \pro*nun`ci*a"tions\
                headline, _, body = paragraph.partition("\n")
                paragraph = _GCIDE_HEAD.sub("", headline) + " " + body
            paragraph = _GCIDE_ACCENT.sub(r"\1", " ".join(paragraph.split()))
            tag = _GCIDE_TAG.search(paragraph)
            if tag and "WordNet" in tag.group():
                continue
            paragraph = paragraph[:tag.start()] if tag else paragraph
            paragraph = _gcide_drop_lead(paragraph)
            if paragraph.startswith("Syn:") or "\\" in paragraph:
                continue
            paragraph = paragraph.removeprefix("Note:")
            paragraph = _GCIDE_SEE.sub("", _GCIDE_AUTHOR.sub("", paragraph))
            paragraph = _BRACKETED.sub("", paragraph).replace("{", "").replace("}", "")
            if "]" not in paragraph:  # else the rest of an etymology the brackets did not delimit
                yield document, paragraph


def _devil_units(path: Path) -> Iterator[tuple[str, str]]:
    """(document, text) of The Devil's Dictionary: each definition's paragraphs and verses, the
    headword and part of speech dropped, and the signature line under a verse too."""
    for headword, entry in _dictd_entries(path):
        entry = re.sub(r"^[^\n,]*,\s*(?:[a-z]{1,5}\.\s*)+", "", entry.lstrip("\n"), count=1)
        entry = re.sub(r"^ {20,}\S.*$", "", entry, flags=re.MULTILINE).replace("_", "")
        for paragraph in _PARAGRAPH_BREAK.split(entry):
            yield _headword_block(headword), paragraph


def _jargon_units(path: Path) -> Iterator[tuple[str, str]]:
    """(document, text) of the Jargon File: each sense's paragraphs, without the headword and
    pronunciation block, the sense numbers and parts of speech, the usage labels and link braces."""
    for headword, entry in _dictd_entries(path):
        body = _PARAGRAPH_BREAK.split(entry.strip("\n"), maxsplit=1)[1:]
        for paragraph in _PARAGRAPH_BREAK.split(body[0] if body else ""):
            paragraph = re.sub(r"^\s*\d+\.\s*(?:[a-z]{1,5}\.\s*)*", "", paragraph)
            paragraph = _BRACKETED.sub("", paragraph).replace("{", "").replace("}", "")
            yield _headword_block(headword), paragraph


def _kjv_units(path: Path) -> Iterator[tuple[str, str]]:
    """(document, text) of the King James Bible: each verse, its book the document. The package
    stores the text in the Bible Retrieval System's format: a header, a table of where each
    compressed window starts, then windows compressed as Unix `compress` (LZW) does."""
    for line in _brs_text(path).splitlines():
        verse = _KJV_VERSE.match(line)
        if verse:
            yield verse.group(1), verse.group(2)


_KJV_VERSE = re.compile(r"([1-3]?[A-Za-z]+)\d+:\d+ (.*)")  # Ge1:1 In the beginning ...
BRS_MAGIC = b"EC02"
BRS_HEADER = 84  # magic, version and an 80-byte description; then window size, count and offsets


def _brs_text(path: Path) -> str:
    """The text of a Bible Retrieval System data file, decompressed window by window, refused when
    its header claims more than MAX_SOURCE_BYTES."""
    raw = read_bounded(path, max_bytes=MAX_SOURCE_BYTES, kind="a Bible Retrieval System data file")
    if raw[:4] != BRS_MAGIC or len(raw) < BRS_HEADER + 8:
        raise BadInput(f"{path}: not a Bible Retrieval System data file (no '{BRS_MAGIC.decode()}' header)")
    window_bytes, count = struct.unpack(">II", raw[BRS_HEADER:BRS_HEADER + 8])
    table_end = BRS_HEADER + 8 + 4 * (count + 1)
    if window_bytes * count > MAX_SOURCE_BYTES or len(raw) < table_end + 3:
        raise BadInput(f"{path}: claims {count} windows of {window_bytes} bytes; at most "
                       f"{MAX_SOURCE_BYTES >> 20} MiB of text are read")
    starts = struct.unpack(f">{count + 1}I", raw[BRS_HEADER + 8:table_end])
    max_bits = raw[table_end + 2] & 0x1F  # after the `compress` magic 1F 9D
    windows_text = (_lzw_inflate(raw[starts[i]:starts[i + 1]], max_bits, window_bytes) for i in range(count))
    return b"".join(windows_text).decode("latin-1")


def _lzw_inflate(data: bytes, max_bits: int, limit: int) -> bytes:
    """Unix `compress` (LZW, block mode) data inflated, at most `limit` bytes. Codes are read in
    groups of eight, and a group is abandoned when the code width grows or the table is cleared,
    as `compress` writes them."""
    if not 9 <= max_bits <= 16:
        raise BadInput(f"LZW data with {max_bits}-bit codes; compress writes 9 to 16")
    out = bytearray()
    table = [bytes([i]) for i in range(256)] + [b""]  # 256 is the CLEAR code
    width, last_code, position, group, group_bits, offset = 9, 511, 0, 0, 0, 0
    previous: Optional[bytes] = None
    cleared = False
    while len(out) <= limit:
        if cleared or offset >= group_bits or len(table) > last_code:
            if len(table) > last_code:
                width += 1
                last_code = 1 << max_bits if width == max_bits else (1 << width) - 1
            if cleared:
                width, last_code, cleared = 9, 511, False
            chunk = data[position:position + width]
            position += width
            group_bits = len(chunk) * 8 if len(chunk) == width else len(chunk) * 8 - (width - 1)
            if group_bits <= 0:
                break
            group, offset = int.from_bytes(chunk, "little"), 0
        code = (group >> offset) & ((1 << width) - 1)
        offset += width
        if code == 256:
            del table[257:]
            previous, cleared = None, True
            continue
        if code < len(table):
            entry = table[code]
        elif previous is not None and code == len(table):
            entry = previous + previous[:1]
        else:
            raise BadInput(f"LZW data: code {code} before it was defined (a corrupt file)")
        out += entry
        if previous is not None and len(table) < 1 << max_bits:
            table.append(previous + entry[:1])
        previous = entry
    return bytes(out[:limit])


def fortune_records(directory: Path) -> Iterator[tuple[str, str]]:
    """(file name, record) of each quotation in a folder of fortune-mod's files, as written: the
    files without a suffix (not the .dat indexes or the .u8 copies), split at the '%' lines. The
    `fortunes` spec (edgekd.data) reads the same records."""
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ""):
        for record in _read_text(path, kind="a fortunes file").split("\n%\n"):
            yield path.name, record


def _fortunes_units(directory: Path) -> Iterator[tuple[str, str]]:
    """(document, text) of fortune-mod's quotations, each fortunes file a document, without the
    '-- author' lines."""
    if not directory.is_dir():
        raise BadInput(f"{directory}: not a folder; the fortunes source is the folder of fortunes files")
    for name, record in fortune_records(directory):
        yield name, re.sub(r"^\s*--.*$", "", record, flags=re.MULTILINE)


_ENGLISH_PARSERS: dict[str, Callable[[Path], Iterator[tuple[str, str]]]] = {
    "wordnet": _wordnet_units,
    "gcide": _gcide_units,
    "kjv": _kjv_units,
    "fortunes": _fortunes_units,
    "devil": _devil_units,
    "jargon": _jargon_units,
}


class _EnglishSource(BaseModel):
    """One source of the `english` spec: the Debian package that installs it, its licence as the
    package's copyright file states it, and the file or folder read."""

    model_config = ConfigDict(extra="forbid", strict=True)
    package: str
    license: str
    path: str


def _english_sources(options: dict, source: str) -> dict[str, _EnglishSource]:
    """A spec's `options.sources`, checked: known parsers, and every package installed (a fixed
    corpus whose hash means one thing, so a missing source fails naming what to install)."""
    raw = options.get("sources")
    if not isinstance(raw, dict) or not raw:
        raise BadInput(f"{source}: key 'options.sources' must map source names ({', '.join(_ENGLISH_PARSERS)}) "
                       "to package, license and path")
    sources = {}
    for name, fields in raw.items():
        if name not in _ENGLISH_PARSERS:
            raise BadInput(f"{source}: key 'options.sources.{name}': no such source; "
                           f"known: {', '.join(_ENGLISH_PARSERS)}")
        try:
            sources[name] = _EnglishSource.model_validate(fields)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(["options", "sources", name, *map(str, first["loc"])])
            raise BadInput(f"{source}: key '{key}': {first['msg']}") from None
    missing = sorted({s.package for s in sources.values() if not Path(s.path).exists()})
    if missing:
        raise BadInput(f"{source}: Debian package(s) {', '.join(missing)} not installed (install with: "
                       f"sudo apt-get install -y {' '.join(missing)})")
    return sources


@dataclass(frozen=True)
class EnglishTexts:
    """The corpus read: each text with its source and document, in order, and each source's
    provenance (package, licence, path, and how many texts and documents it gave)."""

    texts: list[str]
    sources: list[str]
    documents: list[str]
    provenance: dict[str, dict]


def read_english(options: dict, source: str) -> EnglishTexts:
    """The `english` corpus of a spec's `options`: every source's texts windowed, kept when prose,
    deduplicated exactly across sources (the first source listed keeps a shared text), each with its
    source and document so the split can hold out whole documents and score the test split per
    source. `source` (the spec file) starts every error."""
    texts: list[str] = []
    sources: list[str] = []
    documents: list[str] = []
    seen: set[str] = set()
    provenance: dict[str, dict] = {}
    for name, described in _english_sources(options, source).items():
        start = len(texts)
        for document, unit in _ENGLISH_PARSERS[name](Path(described.path)):
            for text in windows(unit):
                if text in seen or not is_prose(text):
                    continue
                if len(texts) == ENGLISH_MAX_TEXTS:
                    raise BadInput(f"{source}: more than {ENGLISH_MAX_TEXTS:,} texts (at source '{name}'); "
                                   "a source is not the file its spec describes")
                seen.add(text)
                texts.append(text)
                sources.append(name)
                documents.append(document)
        if len(texts) == start:
            raise BadInput(f"{source}: source '{name}' gave no text from {described.path}; is it the "
                           f"file package {described.package} installs?")
        provenance[name] = {**described.model_dump(), "texts": len(texts) - start,
                            "documents": len(set(documents[start:]))}
    return EnglishTexts(texts, sources, documents, provenance)
