"""Reading inputs: text modes, JSON lines, globs, and the bad-input errors (file, line, byte offset)."""

from __future__ import annotations

import importlib.util

import pytest
from _data_helpers import DOCUMENTS, tiny_tokenizer, write_jsonl, write_text

from lmforge.data import DataError, DataWarning, TokenDataset, expand_inputs, prepare, read_documents
from lmforge.data.sources import ReadStats


def docs(path, **kwargs) -> list[str]:
    return [text for text, _ in read_documents(path, **kwargs)]


def test_text_modes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst line\nsecond line\r\n\n\n  Third  \n")
    assert docs(path) == ["First line\nsecond line", "Third"]  # BOM dropped, paragraphs stripped
    assert docs(path, text_mode="lines") == ["First line", "second line", "Third"]
    assert docs(path, text_mode="file") == ["First line\nsecond line\r\n\n\n  Third"]


def test_positions_reach_the_file_size(tmp_path):
    path = write_text(tmp_path / "a.txt", DOCUMENTS[:3])
    positions = [pos for _, pos in read_documents(path)]
    assert positions == sorted(positions) and positions[-1] == path.stat().st_size


def test_undecodable_byte_names_file_line_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    data = b"good paragraph\n\nstill fine\nbad \xff here\n\nlast one\n"
    path.write_bytes(data)
    offset = data.index(b"\xff")
    with pytest.raises(DataError) as err:
        docs(path)
    message = str(err.value)
    assert str(path) in message and f"byte offset {offset}" in message and "line 4" in message

    stats = ReadStats()
    with pytest.warns(DataWarning, match=f"byte offset {offset}"):
        kept = docs(path, on_decode_error="skip", stats=stats)
    assert kept == ["good paragraph", "last one"]  # the whole paragraph with the bad line is skipped
    assert stats.skipped == 1 and stats.documents == 2


def test_undecodable_byte_in_jsonl_and_whole_file_mode(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    data = b'{"text": "ok"}\n{"text": "caf\xe9"}\n{"text": "also ok"}\n'
    jsonl.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DataError, match=rf"bad.jsonl: line 2, byte offset {offset}"):
        docs(jsonl)
    with pytest.warns(DataWarning):
        assert docs(jsonl, on_decode_error="skip") == ["ok", "also ok"]
    whole = tmp_path / "bad.md"
    raw = b"\xef\xbb\xbfline one\nline \xc3 two\n"
    whole.write_bytes(raw)
    offset = raw.index(b"\xc3")
    with pytest.raises(DataError, match=rf"bad.md: line 2, byte offset {offset}"):
        docs(whole, text_mode="file")


def test_prepare_skips_undecodable_documents_by_flag(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes("\n\n".join(DOCUMENTS[:4]).encode() + b"\n\nbroken \x80 paragraph\n")
    with pytest.raises(DataError, match=r"mixed.txt: line 9, byte offset \d+.*on_decode_error"):
        prepare([path], tiny_tokenizer(), tmp_path / "fatal", workers=1, progress=False)
    with pytest.warns(DataWarning, match="mixed.txt"):
        manifest = prepare([path], tiny_tokenizer(), tmp_path / "out", workers=1, progress=False,
                           on_decode_error="skip", val_fraction=0.0)
    assert manifest["sources"][0]["skipped"] == 1
    assert TokenDataset(tmp_path / "out").num_documents == 4


def test_empty_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('\n{"text": "  "}\n\n')
    with pytest.raises(DataError, match=r"empty.txt: is empty \(0 bytes\)"):
        docs(empty)
    with pytest.raises(DataError, match=r"blank.jsonl: contains no documents"):
        docs(blank)
    good = write_text(tmp_path / "good.txt", DOCUMENTS[:3])
    with pytest.raises(DataError, match="empty.txt: is empty.*on_empty"):
        prepare([empty, good], tiny_tokenizer(), tmp_path / "fatal", workers=1, progress=False)
    with pytest.warns(DataWarning, match="empty.txt: is empty"):
        manifest = prepare([empty, good], tiny_tokenizer(), tmp_path / "out", workers=1, progress=False,
                           on_empty="skip", val_fraction=0.0)
    assert [s["documents"]["train"] for s in manifest["sources"]] == [0, 3]


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two",}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 3: malformed JSON \(.* at column 16\)"):
        docs(path)
    path.write_text('{"text": "one"}\n{"body": "two", "id": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: no field 'text' \(fields: 'body', 'id'\)"):
        docs(path)
    with pytest.raises(DataError, match=r"line 1: no field 'body' \(fields: 'text'\)"):
        docs(path, text_key="body")
    path.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match=r"line 1: field 'text' must be a string, got int"):
        docs(path)
    path.write_text('["text"]\n')
    with pytest.raises(DataError, match=r"line 1: expected a JSON object"):
        docs(path)


def test_text_key(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["x", "y"], key="content")
    assert docs(path, text_key="content") == ["x", "y"]


def test_globs_folders_and_missing_files(tmp_path):
    for name in ("b.txt", "a.txt", "c.jsonl", "skip.bin"):
        (tmp_path / name).write_text("hello\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("hello\n")
    found = expand_inputs([str(tmp_path / "*.txt"), str(tmp_path / "a.txt")])
    assert [s.path.name for s in found] == ["a.txt", "b.txt"]  # sorted, duplicates dropped
    assert [s.path.name for s in expand_inputs([tmp_path])] == ["a.txt", "b.txt", "c.jsonl", "d.txt"]
    assert [s.format for s in expand_inputs([tmp_path / "c.jsonl", tmp_path / "skip.bin"])] == ["jsonl", "text"]
    assert expand_inputs([tmp_path / "c.jsonl"], input_format="text")[0].format == "text"
    with pytest.raises(DataError, match=r"no files match '.*\*.parquet'"):
        expand_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(DataError, match="nope.txt: no such file"):
        expand_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(DataError, match="no input files"):
        expand_inputs([])


def test_parquet(tmp_path):
    path = tmp_path / "docs.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1 not really")
        with pytest.raises(DataError, match=r"docs.parquet: reading Parquet needs pyarrow.*pip install pyarrow"):
            docs(path)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "two"], "n": [1, 2, 3]}), path)
    assert docs(path) == ["one", "two"]
    with pytest.raises(DataError, match="no column 'body'"):
        docs(path, text_key="body")
