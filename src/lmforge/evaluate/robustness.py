"""Robustness: a metric on seeded, perturbed copies of the inputs, and its drop from the clean score.

Each perturbation is `fn(text, rate, rng) -> str`, with `rng` a `random.Random`; `rate` is the probability that
one unit is touched, so about that fraction of units changes:
- "typo": per ASCII letter, one edit: swap with the next letter, drop, insert a keyboard neighbour after it, or
  replace it by a keyboard neighbour (QWERTY; the case is kept);
- "word_drop": per word, drop it (with its following space); a text never loses every word;
- "word_swap": words swap with their right neighbour so that about `rate` of the words move;
- "case": per word with letters, flip the case of some letters, or lower-case or upper-case the whole word;
- "punctuation": per word, drop one of its punctuation marks, or add one after it when it has none
  (Chinese marks after CJK characters);
- "zh_char": per Chinese character, a common confusion (a homophone or a similar shape: 的/地/得, 在/再, 已/己,
  ...; `ZH_CONFUSIONS`), or else another Chinese character of the same text.
A "word" is a run of non-space characters, except that each CJK character is a word of its own (Chinese and
Japanese are written without spaces). Everything outside the touched units is kept as it was.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.evaluate.classification import check_lengths
from lmforge.evaluate.errors import EvaluationError

Perturbation = Callable[[str, float, random.Random], str]
"""fn(text, rate, rng) -> the perturbed text."""

_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(f"[{_CJK_RANGES}]|[^\\s{_CJK_RANGES}]+")
_ASCII_LETTER = re.compile("[A-Za-z]")

KEYBOARD_NEIGHBOURS = {
    "a": "qwsz", "b": "vghn", "c": "xdfv", "d": "serfcx", "e": "wsdr", "f": "drtgvc", "g": "ftyhbv",
    "h": "gyujnb", "i": "ujko", "j": "huikmn", "k": "jiolm", "l": "kop", "m": "njk", "n": "bhjm", "o": "iklp",
    "p": "ol", "q": "wa", "r": "edft", "s": "awedxz", "t": "rfgy", "u": "yhji", "v": "cfgb", "w": "qase",
    "x": "zsdc", "y": "tghu", "z": "asx",
}
"""The letters next to each key of a QWERTY keyboard."""

ZH_CONFUSIONS = [
    "的地得", "在再", "做作", "已己以", "他她它", "那哪", "象像", "到道", "带戴", "坐座", "即既", "须需", "练炼",
    "辨辩辫", "候侯", "末未", "士土", "日曰", "人入", "大太犬", "天夫", "王玉主", "白百自", "千干于", "买卖",
    "情请清晴", "钱线浅", "很狠", "历厉", "园圆元", "进近", "是事市", "知只", "和合", "们门", "意义", "会回汇",
    "气汽器", "心新信", "利力立", "明名", "有又友", "工公功攻", "成城诚", "家加佳", "期其旗", "理里礼", "时实十",
    "生声升", "见件建", "地第", "分份", "部步", "度渡", "经精", "重种", "员园", "几机", "常长", "定订",
]
"""Groups of Chinese characters commonly confused (homophones, similar shapes); any may replace another."""


def _confusion_table(groups: Sequence[str]) -> dict[str, list[str]]:
    table: dict[str, set[str]] = {}
    for group in groups:
        for ch in group:
            table.setdefault(ch, set()).update(other for other in group if other != ch)
    return {ch: sorted(others) for ch, others in table.items()}


_ZH_TABLE = _confusion_table(ZH_CONFUSIONS)
_MARKS = ",.;:!?"
_ZH_MARKS = "，。、；！？"


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _replace_words(text: str, change: Callable[[str], str]) -> str:
    """`text` with each word replaced by `change(word)`; the spaces between words kept."""
    out, last = [], 0
    for match in _WORD.finditer(text):
        out += [text[last:match.start()], change(match.group())]
        last = match.end()
    out.append(text[last:])
    return "".join(out)


def typo(text: str, rate: float, rng: random.Random) -> str:
    """Keyboard typos: each ASCII letter, with probability `rate`, is swapped with the next letter, dropped,
    followed by an inserted keyboard neighbour, or replaced by one."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if not _ASCII_LETTER.fullmatch(ch) or rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        edit = rng.choice(("swap", "drop", "insert", "replace"))
        nxt = text[i + 1] if i + 1 < len(text) else ""
        neighbour = rng.choice(KEYBOARD_NEIGHBOURS[ch.lower()])
        neighbour = neighbour.upper() if ch.isupper() else neighbour
        if edit == "swap" and _ASCII_LETTER.fullmatch(nxt) and nxt != ch:
            out += [nxt, ch]
            i += 2
            continue
        if edit == "insert":
            out += [ch, neighbour]
        elif edit != "drop":  # "replace", or a swap with no letter to swap with
            out.append(neighbour)
        i += 1
    return "".join(out)


def word_drop(text: str, rate: float, rng: random.Random) -> str:
    """Each word dropped with probability `rate`, with the spaces after it; at least one word stays."""
    words = list(_WORD.finditer(text))
    keep = [rng.random() >= rate for _ in words]
    if all(keep):
        return text
    if not any(keep):
        keep[rng.randrange(len(words))] = True
    out = [text[:words[0].start()]]
    for k, (match, kept) in enumerate(zip(words, keep)):
        if kept:
            gap_end = words[k + 1].start() if k + 1 < len(words) else len(text)
            out += [match.group(), text[match.end():gap_end]]
    body = "".join(out)
    # a dropped last word leaves the space before it at the end: keep the text's own ending instead
    return body if keep[-1] else body.rstrip() + text[len(text.rstrip()):]


def word_swap(text: str, rate: float, rng: random.Random) -> str:
    """Adjacent words swapped in place, so that each word moves with probability about `rate`."""
    words = list(_WORD.finditer(text))
    chosen = [match.group() for match in words]
    swap = rate / (2 - rate)  # the chance a pair starts at a word: then 2s / (1 + s) = rate of the words move
    i = 0
    while i + 1 < len(chosen):
        if chosen[i] != chosen[i + 1] and rng.random() < swap:
            chosen[i], chosen[i + 1] = chosen[i + 1], chosen[i]
            i += 2
        else:
            i += 1
    replacements = iter(chosen)
    return _replace_words(text, lambda word: next(replacements))


def _case_variants(word: str, rng: random.Random) -> list[str]:
    flipped = "".join(ch.swapcase() if ch.swapcase() != ch and rng.random() < 0.5 else ch for ch in word)
    if flipped == word:
        cased = [k for k, ch in enumerate(word) if ch.swapcase() != ch]
        if cased:
            k = rng.choice(cased)
            flipped = word[:k] + word[k].swapcase() + word[k + 1:]
    return [variant for variant in (flipped, word.lower(), word.upper()) if variant != word]


def case(text: str, rate: float, rng: random.Random) -> str:
    """Each word with cased letters, with probability `rate`: some letters' case flipped, or the word lower- or
    upper-cased (always a change)."""
    def change(word: str) -> str:
        if not any(ch.swapcase() != ch for ch in word) or rng.random() >= rate:
            return word
        return rng.choice(_case_variants(word, rng))

    return _replace_words(text, change)


def punctuation(text: str, rate: float, rng: random.Random) -> str:
    """Each word, with probability `rate`, loses one of its punctuation marks, or gains one after it when it
    has none (a Chinese mark after a CJK character)."""
    def change(word: str) -> str:
        if rng.random() >= rate:
            return word
        marks = [k for k, ch in enumerate(word) if _is_punctuation(ch)]
        if marks:
            k = rng.choice(marks)
            return word[:k] + word[k + 1:]
        return word + rng.choice(_ZH_MARKS if re.fullmatch(f"[{_CJK_RANGES}]", word) else _MARKS)

    return _replace_words(text, change)


def zh_char(text: str, rate: float, rng: random.Random) -> str:
    """Each Chinese character, with probability `rate`, replaced by a common confusion (`ZH_CONFUSIONS`), or
    else by another Chinese character of the same text (unchanged when the text has no other)."""
    pool = sorted(set(_HAN.findall(text)))
    out = []
    for ch in text:
        if _HAN.fullmatch(ch) and rng.random() < rate:
            options = _ZH_TABLE.get(ch) or [other for other in pool if other != ch]
            ch = rng.choice(options) if options else ch
        out.append(ch)
    return "".join(out)


PERTURBATIONS: dict[str, Perturbation] = {
    "typo": typo, "word_drop": word_drop, "word_swap": word_swap, "case": case, "punctuation": punctuation,
    "zh_char": zh_char,
}
"""The perturbations by name."""


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise EvaluationError(f"rate must be a number in [0, 1], not {rate!r}")
    return float(rate)


def _check_kind(kind: str) -> Perturbation:
    if kind not in PERTURBATIONS:
        raise EvaluationError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[kind]


def perturb(texts: Sequence[str], kind: str, rate: float = 0.1, seed: int = 0) -> list[str]:
    """Each text perturbed by `kind` (a name in `PERTURBATIONS`) at `rate`; text i draws from its own generator
    seeded by (kind, seed, i), so the output depends only on these and the text."""
    fn, rate = _check_kind(kind), _check_rate(rate)
    if isinstance(texts, str):
        raise EvaluationError("texts must be a list of strings, not one string")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EvaluationError(f"texts[{i}] is {type(text).__name__}, not a string")
        out.append(text if rate == 0 else fn(text, rate, random.Random(f"{kind}/{seed}/{i}")))
    return out


def default_kinds(texts: Sequence[str]) -> list[str]:
    """The perturbations that apply to `texts`: "typo" and "case" need Latin letters, "zh_char" Chinese ones."""
    latin = any(_ASCII_LETTER.search(t) for t in texts)
    han = any(_HAN.search(t) for t in texts)
    return [kind for kind in PERTURBATIONS
            if not (kind in ("typo", "case") and not latin) and not (kind == "zh_char" and not han)]


def robustness(score_fn: Callable[[list[str], Any], float], texts: Sequence[str], references: Sequence[Any],
               kinds: Sequence[str] | None = None, rate: float = 0.1, seed: int = 0,
               clean: float | None = None) -> dict[str, Any]:
    """`score_fn(texts, references)` on the clean texts and on each perturbation of them, and the drops.

    Returns {"clean", "rate", "seed", "perturbations": [{"name", "score", "drop"}]}, drop = clean - perturbed.
    `kinds=None`: `default_kinds(texts)`. `clean`: the clean score when the caller has it already (it is then
    not computed again).
    """
    check_lengths(texts, references, names=("texts", "references"))
    rate = _check_rate(rate)
    kinds = default_kinds(texts) if kinds is None else list(kinds)
    for kind in kinds:
        _check_kind(kind)

    def score(inputs: list[str], name: str) -> float:
        value = score_fn(inputs, references)
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise EvaluationError(f"score_fn returned {value!r} on the {name} texts, not a finite number")
        return value

    clean = score(list(texts), "clean") if clean is None else float(clean)
    rows = []
    for kind in kinds:
        perturbed = score(perturb(texts, kind, rate, seed), kind)
        rows.append({"name": kind, "score": perturbed, "drop": clean - perturbed})
    return {"clean": clean, "rate": rate, "seed": seed, "perturbations": rows}


__all__ = ["KEYBOARD_NEIGHBOURS", "PERTURBATIONS", "Perturbation", "ZH_CONFUSIONS", "case", "default_kinds",
           "perturb", "punctuation", "robustness", "typo", "word_drop", "word_swap", "zh_char"]
