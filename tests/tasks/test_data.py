"""Reading labelled files: each format's rows and line numbers; each error names file, line and column."""

from __future__ import annotations

import json

import pytest

from lmforge.data.errors import DataError
from lmforge.tasks import TaskSpec
from lmforge.tasks.data import MAX_PROBLEMS, read_examples

SPEC = TaskSpec()


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_jsonl_rows_and_line_numbers_skip_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n\n   \n{"text": "b", "label": "x"}\n')
    examples = read_examples(path, SPEC, required=["text", "label"])
    assert [e.fields for e in examples] == [{"text": "a", "label": 1}, {"text": "b", "label": "x"}]
    assert [e.line for e in examples] == [1, 4] and examples[0].source == str(path)


def test_csv_header_quotes_and_multiline_rows(tmp_path):
    text = 'text,label\n"hello, world",pos\n"two\nlines",neg\nplain,pos\n'
    examples = read_examples(write(tmp_path, "d.csv", text), SPEC)
    assert [e.fields["text"] for e in examples] == ["hello, world", "two\nlines", "plain"]
    assert [e.line for e in examples] == [2, 3, 5]  # the line each row starts on


def test_tsv_by_extension_and_delimiter_override(tmp_path):
    examples = read_examples(write(tmp_path, "d.tsv", "text\tlabel\na b\t1\n"), SPEC)
    assert examples[0].fields == {"text": "a b", "label": "1"}
    examples = read_examples(write(tmp_path, "d.txt", "text|label\nx|0\n"), TaskSpec(delimiter="|"))
    assert examples[0].fields == {"text": "x", "label": "0"} and examples[0].line == 2


def test_json_list_keeps_the_line_of_each_object(tmp_path):
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    path = write(tmp_path, "d.json", json.dumps(rows, indent=2))
    examples = read_examples(path, SPEC)
    assert [e.fields for e in examples] == rows
    lines = json.dumps(rows, indent=2).splitlines()
    assert [lines[e.line - 1].strip() for e in examples] == ["{", "{"]
    assert [e.line for e in examples] == [2, 6]


def test_json_file_of_json_lines(tmp_path):
    examples = read_examples(write(tmp_path, "d.json", '{"text": "a"}\n{"text": "b"}\n'), SPEC)
    assert [e.fields["text"] for e in examples] == ["a", "b"]


def test_conll_columns(tmp_path):
    text = "-DOCSTART- -X- O O\n\nAnna NNP B-PER\nBerg NNP I-PER\nleft VBD O\n\n\nOslo NNP B-LOC\n"
    examples = read_examples(write(tmp_path, "d.conll", text), SPEC)
    assert [e.fields for e in examples] == [
        {"tokens": ["Anna", "Berg", "left"], "tags": ["B-PER", "I-PER", "O"]},
        {"tokens": ["Oslo"], "tags": ["B-LOC"]}]
    assert [e.line for e in examples] == [3, 8]


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"text": "a"}\n{"text": "b",}\n', r"bad\.jsonl:2:14: not valid JSON"),
    ("bad.jsonl", '{"text": "a"}\n["not", "object"]\n', r"bad\.jsonl:2: expected a JSON object.*got list"),
    ("bad.json", '[{"text": "a"},\n {"text": }]', r"bad\.json:2:11: not valid JSON"),
    ("bad.json", '[{"text": "a"} {"text": "b"}]', r"bad\.json:1:16: expected ',' or ']'"),
    ("bad.json", '[{"text": "a"}', r"bad\.json:1:15: the JSON list is not closed"),
    ("bad.json", '[{"text": "a"}, 3]', r"bad\.json:1:17: expected a JSON object.*got int"),
    ("bad.csv", "text,label\na,1\nb,1,extra\n", r"bad\.csv:3: 3 fields, but the header row names 2"),
    ("bad.csv", 'text,label\na,1\n"b\n', r"bad\.csv:3: malformed CSV row"),
    ("bad.csv", "text,,label\na,b,c\n", r"bad\.csv:1: the first row must name every column.*field\(s\) 2"),
    ("bad.tsv", "text\ttext\na\tb\n", r"bad\.tsv:1: .*repeated: text"),
    ("bad.conll", "Anna B-PER\nlonely\n", r"bad\.conll:2: expected a word and its tag"),
])
def test_malformed_rows_name_file_line_and_column(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_examples(write(tmp_path, name, text), SPEC)


def test_missing_required_column_names_row_and_column(tmp_path):
    text = '{"text": "a", "label": 1}\n{"text": "b"}\n{"text": "c", "label": null}\n'
    path = write(tmp_path, "d.jsonl", text)
    with pytest.raises(DataError) as err:
        read_examples(path, SPEC, required=["text", "label"])
    message = str(err.value)
    assert "2 problems" in message
    assert f"{path}:2, column 'label': missing (the row has 'text')" in message
    assert f"{path}:3, column 'label': missing" in message


def test_problems_are_gathered_and_capped(tmp_path):
    path = write(tmp_path, "d.jsonl", "".join("{oops\n" for _ in range(MAX_PROBLEMS + 3)))
    with pytest.raises(DataError) as err:
        read_examples(path, SPEC)
    message = str(err.value)
    assert f"{MAX_PROBLEMS + 3} problems" in message and "... and 3 more" in message
    assert message.count("not valid JSON") == MAX_PROBLEMS


def test_undecodable_bytes_name_line_and_column(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2:14: not UTF-8 \(byte 0xe9\)"):
        read_examples(path, SPEC)


def test_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path, "d.csv", "\ufefftext,label\na,1\n")
    assert read_examples(path, SPEC)[0].fields == {"text": "a", "label": "1"}


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "", "no examples"),
    ("blank.jsonl", "\n\n  \n", "no examples"),
    ("empty.json", "[]", "no examples"),
    ("empty.csv", "", "no header row"),
    ("header-only.csv", "text,label\n", "no examples"),
])
def test_empty_files(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_examples(write(tmp_path, name, text), SPEC)


def test_missing_file_folder_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_examples(tmp_path / "nope.jsonl", SPEC)
    with pytest.raises(DataError, match="not a file"):
        read_examples(tmp_path, SPEC)
    with pytest.raises(DataError, match=r"unknown file type '\.xml'.*task\.delimiter"):
        read_examples(write(tmp_path, "d.xml", "<a/>"), SPEC)
