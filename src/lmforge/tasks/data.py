"""Labelled files -> `Example`s: JSON lines, a JSON list, CSV / TSV with a header row, CoNLL columns.

Every example remembers its file and line, so a task can say where a bad value is. Reading problems
(malformed JSON, a row that is not an object, a short CSV row, a missing column, undecodable bytes) are
gathered, up to `MAX_PROBLEMS`, and raised together as one `DataError` naming each file:line (and column).

Formats, by extension (`spec.delimiter` overrides the separator of delimited files):
- `.jsonl` / `.ndjson`: one JSON object per line; blank lines are skipped.
- `.json`: a list of objects (a file that does not start with `[` is read as JSON lines).
- `.csv` (","), `.tsv` / `.tab` (tab), or any other extension when `spec.delimiter` is set: the first row
  names the columns; quoted fields may span lines (an example's line is the one its row starts on).
  Values are strings.
- `.conll` / `.bio`: token classification in CoNLL-2003 columns: one word per line, its tag in the last
  column, a blank line between sentences, `-DOCSTART-` lines skipped; rows get `spec.tokens` and `spec.tags`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.data.errors import DataError
from lmforge.tasks.base import Example, TaskSpec

MAX_PROBLEMS = 10
"""How many problems one error message lists (the total is counted)."""

JSON_LINES = (".jsonl", ".ndjson")
JSON_LIST = (".json",)
DELIMITED = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
CONLL = (".conll", ".bio")


def read_examples(path: str | Path, spec: TaskSpec, required: Sequence[str] = ()) -> list[Example]:
    """The rows of a labelled file as `Example`s; a DataError naming file:line(:column) for any bad row,
    or when a row lacks one of the `required` columns (missing or null)."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DataError(f"{source}: no such file")
    if not path.is_file():
        raise DataError(f"{source}: not a file (give a .jsonl, .json, .csv, .tsv or .conll file)")
    text = _decode(path.read_bytes(), source)
    suffix = path.suffix.lower()
    problems: list[str] = []
    if suffix in JSON_LINES or (suffix in JSON_LIST and not text.lstrip().startswith("[")):
        examples = _read_json_lines(text, source, problems)
    elif suffix in JSON_LIST:
        examples = _read_json_list(text, source, problems)
    elif suffix in CONLL:
        examples = _read_conll(text, source, spec, problems)
    elif suffix in DELIMITED or spec.delimiter is not None:
        delimiter = spec.delimiter if spec.delimiter is not None else DELIMITED[suffix]
        examples = _read_delimited(text, source, delimiter, problems)
    else:
        raise DataError(f"{source}: unknown file type {suffix or '(no extension)'!r}; use .jsonl, .json, "
                        f".csv, .tsv or .conll, or set task.delimiter for another delimited file")
    for example in examples:
        for column in required:
            if example.fields.get(column) is None:
                problems.append(f"{example.where(column)}: missing (the row has "
                                f"{', '.join(map(repr, example.fields)) or 'no columns'}); set the task's "
                                f"column names if the file calls it otherwise")
    if problems:
        raise DataError(_summary(problems))
    if not examples:
        raise DataError(f"{source}: no examples (the file is empty or holds only blank lines)")
    return examples


def _decode(raw: bytes, source: str) -> str:
    """UTF-8 text (a byte-order mark is dropped), or a DataError at the first bad byte's line and column."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{source}:{line}:{column}: not UTF-8 (byte {raw[err.start]:#04x}); "
                        f"convert the file to UTF-8") from None


def _summary(problems: list[str]) -> str:
    head = "\n  ".join(problems[:MAX_PROBLEMS])
    more = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
    return f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the data:\n  {head}{more}"


def _object(value: Any, source: str, line: int, problems: list[str],
            column: int | None = None) -> Example | None:
    if not isinstance(value, dict):
        where = f"{source}:{line}" + (f":{column}" if column else "")
        problems.append(f"{where}: expected a JSON object with named columns, got {type(value).__name__}")
        return None
    return Example(value, source, line)


def _read_json_lines(text: str, source: str, problems: list[str]) -> list[Example]:
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{source}:{number}:{err.colno}: not valid JSON ({err.msg})")
            continue
        example = _object(value, source, number, problems)
        if example is not None:
            examples.append(example)
    return examples


def _read_json_list(text: str, source: str, problems: list[str]) -> list[Example]:
    """A JSON list of objects, decoded element by element so each example knows the line it starts on."""
    decoder = json.JSONDecoder()

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        return pos

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def column_of(pos: int) -> int:
        return pos - (text.rfind("\n", 0, pos) + 1) + 1

    def fail(pos: int, msg: str) -> list[Example]:
        problems.append(f"{source}:{line_of(pos)}:{column_of(pos)}: {msg}")
        return []

    examples = []
    pos = skip_space(skip_space(0) + 1)  # past "["
    while pos >= len(text) or text[pos] != "]":
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            return fail(err.pos, f"not valid JSON ({err.msg})")
        example = _object(value, source, line_of(pos), problems, column_of(pos))
        if example is not None:
            examples.append(example)
        pos = skip_space(end)
        if pos >= len(text):
            return fail(pos, "the JSON list is not closed with ']'")
        if text[pos] == "]":
            break
        if text[pos] != ",":
            return fail(pos, "expected ',' or ']' after a list element")
        pos = skip_space(pos + 1)
    rest = skip_space(pos + 1)
    if rest < len(text):
        fail(rest, "extra data after the JSON list")
    return examples


def _read_delimited(text: str, source: str, delimiter: str, problems: list[str]) -> list[Example]:
    """CSV/TSV with a header row; each row becomes a dict by the header's names."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    examples = []
    start = 1  # the line the next row starts on
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            kind = "TSV" if delimiter == "\t" else "CSV"
            problems.append(f"{source}:{start}: malformed {kind} row ({err})")
            break  # the reader cannot resynchronise after a quoting error
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            names = [name.strip() for name in row]
            empty = [i + 1 for i, name in enumerate(names) if not name]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if empty or repeated:
                problems.append(f"{source}:{line}: the first row must name every column (header row)"
                                + (f"; field(s) {', '.join(map(str, empty))} are empty" if empty else "")
                                + (f"; repeated: {', '.join(repeated)}" if repeated else ""))
                return []
            header = names
            continue
        if len(row) != len(header):
            problems.append(f"{source}:{line}: {len(row)} fields, but the header row names {len(header)} "
                            f"({', '.join(header)}); check the delimiter {delimiter!r} and the quoting")
            continue
        examples.append(Example(dict(zip(header, row)), source, line))
    if header is None and not problems:
        raise DataError(f"{source}: no header row (the file is empty); the first row must name the columns")
    return examples


def _read_conll(text: str, source: str, spec: TaskSpec, problems: list[str]) -> list[Example]:
    """CoNLL columns: word ... tag per line, sentences separated by blank lines."""
    examples = []
    words: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> None:
        if words:
            examples.append(Example({spec.tokens: list(words), spec.tags: list(tags)}, source, first))
        words.clear()
        tags.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            flush()
            continue
        if len(parts) < 2:
            problems.append(f"{source}:{number}: expected a word and its tag separated by whitespace, "
                            f"got {line!r}")
            continue
        if not words:
            first = number
        words.append(parts[0])
        tags.append(parts[-1])
    flush()
    return examples
