"""TSV integrity (issue 10): rows read == records in the file, or the read fails naming the line."""

import base64
import csv
import io

import pytest
from PIL import Image

from ivcprune.eval.integrity import row_hashes
from ivcprune.eval.tsv import DataError, read_tsv

HEADER = "index\timage\tquestion\tanswer\n"


def b64_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_unescaped_leading_quote_merging_rows_fails_naming_the_line(tmp_path):
    img = b64_png()
    text = HEADER + (f"0\t{img}\tq0\tYes\n"
                     f'1\t{img}\t"Best thing ever?\tYes\n'    # opens a quoted field ...
                     f"2\t{img}\tq2\tNo\n"
                     f'3\t{img}\tsay "hi" now\tYes\n'          # ... closed only here: rows 1-3 would merge
                     f"4\t{img}\tq4\tNo\n")
    (tmp_path / "M.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_tsv("M", root=tmp_path)
    msg = str(exc.value)
    assert "M.tsv" in msg and "line 3 (index 1)" in msg and "column 'question'" in msg and "unescaped" in msg


def test_stray_quote_within_a_line_fails_naming_the_line(tmp_path):
    (tmp_path / "T.tsv").write_text(HEADER + '0\tAAAA\tq0\tYes\n1\tAAAA\t"Best" thing\tNo\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"T.tsv: line 3: stray quote"):
        read_tsv("T", root=tmp_path)


def test_quote_never_closed_names_the_line(tmp_path):
    (tmp_path / "Q.tsv").write_text(HEADER + "0\tAAAA\tq0\tYes\n1\tAAAA\t\"open quote\tNo\n2\tAAAA\tq2\tNo\n",
                                    encoding="utf-8")
    with pytest.raises(DataError, match=r"Q.tsv: .*line 3, index 1, is never closed"):
        read_tsv("Q", root=tmp_path)


def test_short_and_long_rows_name_their_lines(tmp_path):
    (tmp_path / "S.tsv").write_text(HEADER + "0\tAAAA\tq0\tYes\n1\tAAAA\n2\tAAAA\tq2\tNo\textra\n",
                                    encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_tsv("S", root=tmp_path)
    assert "line 3 (index 1): 2 fields" in str(exc.value) and "line 4 (index 2): 5 fields" in str(exc.value)


def test_encoding_error_names_the_row_and_column(tmp_path):
    (tmp_path / "U.tsv").write_bytes(HEADER.encode() + b"0\tAAAA\tq0\tYes\n17\tAAAA\tcaf\xe9 au lait\tNo\n")
    with pytest.raises(DataError) as exc:
        read_tsv("U", root=tmp_path)
    msg = str(exc.value)
    assert "not UTF-8" in msg and "line 3 (index 17)" in msg and "column 'question'" in msg and "0xe9" in msg


def test_legitimately_quoted_newlines_tabs_and_quotes_parse_correctly(tmp_path):
    """csv.writer output (minimal quoting) and quote-all files with multi-line cells keep every row."""
    img = b64_png()
    rows = [["index", "image", "question", "hint", "answer"],
            [1, img, 'say "hi"', "line one\nline two\n\nline four", "A"],
            [2, img, "tab\tinside", "", "B"],
            [3, img, '"quoted" start', "x\r\ny", "C"]]
    for quoting in (csv.QUOTE_MINIMAL, csv.QUOTE_ALL):
        with open(tmp_path / "L.tsv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f, delimiter="\t", quoting=quoting, lineterminator="\r\n").writerows(rows)
        df = read_tsv("L", root=tmp_path).rows
        assert list(df["index"]) == [1, 2, 3]
        assert list(df["question"]) == ['say "hi"', "tab\tinside", '"quoted" start']
        assert df["hint"][0] == "line one\nline two\n\nline four" and df["hint"][2] == "x\r\ny"


def test_row_hashes_follow_content_and_referenced_images():
    import pandas as pd

    img_a, img_b = "A" * 100, "B" * 100
    df = pd.DataFrame({"index": ["0", "1", "2"], "image": [img_a, "0", img_a], "question": ["q", "q", "q"],
                       "answer": ["Yes", "No", "Yes"]})
    base = row_hashes(df, {"0": img_a})
    assert len(set(base)) == 3  # the index is part of the row
    edited = df.copy()
    edited.loc[2, "question"] = "Q"  # same length, different content
    assert row_hashes(edited, {"0": img_a})[2] != base[2]
    assert row_hashes(edited, {"0": img_a})[:2] == base[:2]
    assert row_hashes(df, {"0": img_b})[1] != base[1]  # the referenced image changed
    regraded = df.copy()
    regraded.loc[0, "answer"] = "No"  # the model never sees the answer: no re-run
    assert row_hashes(regraded, {"0": img_a}) == base
