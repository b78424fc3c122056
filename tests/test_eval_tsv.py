"""TSV reading and image decoding (docs/HARNESS.md §2, §13)."""

import base64
import csv
import io

import pytest
from PIL import Image

from ivcprune.eval.tsv import BadImage, DataError, load_image, lmudata_root, read_tsv, reencode_vlmeval, tsv_path


def b64_png(size=(8, 6), colour=(200, 10, 10, 128), mode="RGBA") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, rows, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n"):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=quoting, lineterminator=lineterminator)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("quoting,eol", [(csv.QUOTE_MINIMAL, "\r\n"), (csv.QUOTE_ALL, "\n")])
def test_both_quoting_styles_and_line_endings(tmp_path, quoting, eol):
    img = b64_png()
    write_tsv(tmp_path / "X.tsv", [["index", "image", "question", "answer", "A", "B", "C"],
                                   [1, img, "null", "A", "NA", "None", ""],
                                   [2, "1", 'say "hi"\tthere', "B", "x", "y", ""]], quoting, eol)
    data = read_tsv("X", root=tmp_path)
    rows = data.rows
    assert list(rows["index"]) == [1, 2]
    assert rows["question"][0] == "null"                  # NA-like strings stay text
    assert rows["A"][0] == "NA" and rows["B"][0] == "None" and rows["C"][0] == ""
    assert rows["question"][1] == 'say "hi"\tthere'
    assert load_image(rows.iloc[1], data).size == (8, 6)  # reference to index 1 resolves


def test_index_str_when_not_all_ints(tmp_path):
    write_tsv(tmp_path / "H.tsv", [["index", "image", "question"], ["a_0_1_2_3", b64_png(), "q"], ["7", b64_png(), "q"]])
    assert list(read_tsv("H", root=tmp_path).rows["index"]) == ["a_0_1_2_3", "7"]


def test_rows_without_image_are_kept_as_misses_and_limit(tmp_path):
    img = b64_png()
    write_tsv(tmp_path / "D.tsv", [["index", "image", "question"], [1, img, "a"], [2, "", "b"], [3, img, "c"],
                                   [4, img, "d"]])
    data = read_tsv("D", root=tmp_path)
    assert data.n_dropped == 0 and list(data.rows["index"]) == [1, 2, 3, 4]  # never dropped from the denominator
    with pytest.raises(BadImage, match="row 2 has an empty image cell"):
        load_image(data.rows.iloc[1], data)
    assert list(read_tsv("D", root=tmp_path, limit=2).rows["index"]) == [1, 2]
    with pytest.raises(DataError, match="no rows"):
        read_tsv("D", root=tmp_path, limit=0)


def test_header_only_is_no_rows(tmp_path):
    write_tsv(tmp_path / "E.tsv", [["index", "image", "question"]])
    with pytest.raises(DataError, match="no rows"):
        read_tsv("E", root=tmp_path)


def test_bad_images_are_bad_image_not_load_errors(tmp_path):
    img = b64_png()
    write_tsv(tmp_path / "B.tsv", [["index", "image", "question"], [1, img, "ok"], [2, "!!!notbase64" * 10, "x"],
                                   [3, base64.b64encode(b"not an image" * 10).decode(), "y"], [4, "99", "missing ref"],
                                   [5, "4", "ref to a ref"]])
    data = read_tsv("B", root=tmp_path)
    assert load_image(data.rows.iloc[0], data).mode == "RGB"
    for i in (1, 2, 3, 4):
        with pytest.raises(BadImage, match="bad image"):
            load_image(data.rows.iloc[i], data)


def test_image_path_lookup(tmp_path):
    (tmp_path / "images" / "P").mkdir(parents=True)
    Image.new("RGB", (5, 4), "blue").save(tmp_path / "images" / "P" / "a.png")
    Image.new("RGB", (3, 2), "blue").save(tmp_path / "b.png")
    write_tsv(tmp_path / "P.tsv", [["index", "image_path", "question"], [1, "a.png", "q"], [2, "b.png", "q"],
                                   [3, str(tmp_path / "b.png"), "q"], [4, "nowhere.png", "q"]])
    data = read_tsv("P", root=tmp_path)
    assert [load_image(data.rows.iloc[i], data).size for i in range(3)] == [(5, 4), (3, 2), (3, 2)]
    with pytest.raises(BadImage, match="not found"):
        load_image(data.rows.iloc[3], data)


def test_vlmeval_reencode_vs_raw(tmp_path):
    noisy = Image.effect_noise((32, 32), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    write_tsv(tmp_path / "R.tsv", [["index", "image", "question", "image_path"], [1, png, "q", ""],
                                   [2, png, "q", "x.png"], [3, b64_png(), "q", ""]])
    data = read_tsv("R", root=tmp_path)
    raw = load_image(data.rows.iloc[0], data, "raw")
    jpeg = load_image(data.rows.iloc[0], data, "vlmeval")          # no image_path: JPEG quality 75
    png_again = load_image(data.rows.iloc[1], data, "vlmeval")     # image_path .png: lossless
    assert raw.tobytes() == noisy.tobytes() == png_again.tobytes()
    assert jpeg.tobytes() != raw.tobytes() and jpeg.size == raw.size
    assert load_image(data.rows.iloc[2], data, "vlmeval").mode == "RGB"   # RGBA converted before JPEG
    assert reencode_vlmeval(Image.new("P", (4, 4))).mode == "RGB"


def test_validation_errors_name_file_and_rows(tmp_path):
    img = b64_png()
    write_tsv(tmp_path / "Dup.tsv", [["index", "image", "question"], [1, img, "a"], [1, img, "b"]])
    with pytest.raises(DataError, match=r"Dup.tsv: duplicate index values: 1"):
        read_tsv("Dup", root=tmp_path)
    write_tsv(tmp_path / "NoQ.tsv", [["index", "image"], [1, img]])
    with pytest.raises(DataError, match="missing required column 'question'"):
        read_tsv("NoQ", root=tmp_path)
    write_tsv(tmp_path / "Multi.tsv", [["index", "image", "question"], [1, "['a', 'b']", "a"]])
    with pytest.raises(DataError, match="multi-image"):
        read_tsv("Multi", root=tmp_path)
    write_tsv(tmp_path / "VG.tsv", [["index", "image", "question", "answer", "height", "width"],
                                    [1, img, "a", "1 2 3 4", "6", "8"], [2, img, "b", "1 2", "6", "8"],
                                    [3, img, "c", "1 2 3 4", "x", "8"]])
    with pytest.raises(DataError, match=r"row 2 \(index 2\)"):
        read_tsv("VG", root=tmp_path, grounding=True)
    (tmp_path / "Bin.tsv").write_bytes(b"index\timage\tquestion\r\n1\t\xff\xfe\tq\r\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_tsv("Bin", root=tmp_path)
    (tmp_path / "Quote.tsv").write_text('index\timage\tquestion\n1\tabc\t"open quote\n', encoding="utf-8")
    with pytest.raises(DataError, match="Quote.tsv"):
        read_tsv("Quote", root=tmp_path)


def test_missing_file_and_root_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LMUData", str(tmp_path))
    with pytest.raises(DataError) as exc:
        tsv_path("RefCOCO_testA_for_qwen25vl")
    msg = str(exc.value)
    assert str(tmp_path / "RefCOCO_testA_for_qwen25vl.tsv") in msg and "LMUData=" in msg
    assert "finetune_refcoco_testA.tsv" in msg and "--qwen25" in msg
    monkeypatch.setenv("LMUData", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="not an existing directory"):
        lmudata_root()
    monkeypatch.delenv("LMUData")
    assert lmudata_root().name == "LMUData"
