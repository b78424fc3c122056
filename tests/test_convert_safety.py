"""Issue 10: the converter never replaces good data with less, says what it skipped and why, and exits non-zero
when it could write nothing (real files, the real CLI)."""

import subprocess
import sys

from test_convert import STANDARD, fixture_json, images, run  # noqa: F401  (images is a fixture)

from ivcprune.tools.convert import count_rows

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_wrong_images_folder_keeps_the_good_tsv_and_exits_1(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    out = tmp_path / "o"
    rc, _, _ = run(["--images_folder", images, "--annotations_files", ann, "--output_dir", out], capsys)
    assert rc == 0 and (out / "RefCOCO_testA.tsv").read_bytes() == STANDARD
    empty = tmp_path / "empty_images"
    empty.mkdir()
    rc, stdout, err = run(["--images_folder", empty, "--annotations_files", ann, "--output_dir", out], capsys)
    assert rc == 1
    assert "RefCOCO_testA.tsv: no row could be written: all 5 entries were skipped (missing image 5)" in err
    assert f"is --images_folder {empty} the COCO train2014 folder?" in err and "existing file is kept" in err
    assert "0 rows, 5 skipped (5 missing images)" in stdout and "not written" in stdout
    assert (out / "RefCOCO_testA.tsv").read_bytes() == STANDARD  # untouched
    assert sorted(p.name for p in out.iterdir()) == ["RefCOCO_testA.tsv"]  # no temporary file left


def test_nothing_written_without_an_existing_file_exits_1(tmp_path, capsys):
    empty = tmp_path / "empty_images"
    empty.mkdir()
    rc, _, err = run(["--images_folder", empty, "--annotations_files", fixture_json(tmp_path / "ann"),
                      "--output_dir", tmp_path / "o"], capsys)
    assert rc == 1 and "no row could be written" in err and not (tmp_path / "o" / "RefCOCO_testA.tsv").exists()


def test_fewer_rows_need_force(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    out = tmp_path / "o"
    assert run(["--images_folder", images, "--annotations_files", ann, "--output_dir", out], capsys)[0] == 0
    (images / "b.jpg").unlink()  # two of the four rows lose their image
    rc, stdout, err = run(["--images_folder", images, "--annotations_files", ann, "--output_dir", out], capsys)
    assert rc == 1
    assert "refusing to replace the existing file (4 rows) with 2 rows (3 skipped: missing image 3); pass --force" \
        in err
    assert "skipped by reason: missing image 3" in stdout
    assert (out / "RefCOCO_testA.tsv").read_bytes() == STANDARD
    rc, _, _ = run(["--images_folder", images, "--annotations_files", ann, "--output_dir", out, "--force"], capsys)
    assert rc == 0 and count_rows(out / "RefCOCO_testA.tsv") == 2


def test_same_or_more_rows_replace_without_force_and_count_rows_reads_quoted_newlines(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    out = tmp_path / "o"
    for _ in range(2):
        assert run(["--images_folder", images, "--annotations_files", ann, "--output_dir", out], capsys)[0] == 0
    assert count_rows(out / "RefCOCO_testA.tsv") == 4
    (tmp_path / "q.tsv").write_text('index\tquestion\r\n1\t"two\r\nlines"\r\n2\tx\r\n', encoding="utf-8")
    assert count_rows(tmp_path / "q.tsv") == 2


def test_data_tools_wrapper_exits_1_when_nothing_is_written(tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    res = subprocess.run([sys.executable, str(REPO / "data_tools" / "convert_to_tsv.py"), "--images_folder", str(empty),
                          "--annotations_files", str(fixture_json(tmp_path / "ann")), "--output_dir",
                          str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1 and "no row could be written" in res.stderr
