"""Converter (docs/HARNESS.md §3): byte contract, naming modes, collisions, skips and warnings."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ivcprune.eval.tsv import read_tsv
from ivcprune.tools.convert import cli_main, output_name

HEADER = b"index\timage\tquestion\theight\twidth\tanswer\r\n"
# a.jpg = b"img-a" -> aW1nLWE= ; b.jpg = b"img-b!" -> aW1nLWIh (the converter never decodes images)
STANDARD = HEADER + (
    b'11\taW1nLWE=\t"man in ""red"" shirt"\t70\t98\t10 20 40 60\r\n'
    b'12\taW1nLWE=\t"left\tdog"\t70\t98\t1.5 2.25 11.6 5.25\r\n'
    b"13\taW1nLWIh\tnull\t56\t90\t0 0 90 56\r\n"
    b"15\taW1nLWIh\tfar right\t56\t90\t299.9 7.5 384.59999999999997 27.5\r\n"
)
# W=98: 98/28 = 3.5 -> 4 (half to even, up), Wn=112; H=70: 2.5 -> 2 (half to even, down), Hn=56;
# W=90: 3.21 -> 3, Wn=84 (down); H=56 exact.  y of 7.5 and 27.5 round half to even: 8 and 28.
QWEN25 = HEADER + (
    b'11\taW1nLWE=\t"man in ""red"" shirt"\t70\t98\t11 16 46 48\r\n'
    b'12\taW1nLWE=\t"left\tdog"\t70\t98\t2 2 13 4\r\n'
    b"13\taW1nLWIh\tnull\t56\t90\t0 0 84 56\r\n"
    b"15\taW1nLWIh\tfar right\t56\t90\t280 8 359 28\r\n"
)


def fixture_json(folder: Path, stem: str = "finetune_refcoco_testA", images=None, annotations=None) -> Path:
    data = {
        "images": images if images is not None else [
            {"id": 11, "file_name": "a.jpg", "height": 70, "width": 98, "caption": 'man in "red" shirt'},
            {"id": 12, "file_name": "a.jpg", "height": 70, "width": 98, "caption": "left\tdog"},
            {"id": 13, "file_name": "b.jpg", "height": 56, "width": 90, "caption": "null"},
            {"id": 14, "file_name": "missing.jpg", "height": 56, "width": 90, "caption": "ghost"},
            {"id": 15, "file_name": "b.jpg", "height": 56, "width": 90, "caption": "far right"},
        ],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 11, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 12, "bbox": [1.5, 2.25, 10.1, 3]},
            {"id": 3, "image_id": 13, "bbox": [0, 0, 90, 56]},
            {"id": 4, "image_id": 14, "bbox": [1, 1, 2, 2]},
            {"id": 5, "image_id": 15, "bbox": [299.9, 7.5, 84.7, 20]},
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "train2014"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"img-a")
    (folder / "b.jpg").write_bytes(b"img-b!")
    return folder


def run(args, capsys):
    rc = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_standard_bytes_and_summary(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    rc, out, err = run(["--images_folder", images, "--annotations_files", ann, "--output_dir", tmp_path / "o"], capsys)
    assert rc == 0
    assert (tmp_path / "o" / "RefCOCO_testA.tsv").read_bytes() == STANDARD
    assert "RefCOCO_testA.tsv: 4 rows, 1 skipped (1 missing images)" in out
    assert "mode=standard" in out and "total: 4 rows, 1 skipped" in out
    assert "skipped id 14: missing image" in err
    assert "outside" in err            # box of id 15 leaves the 90 px image: warning only, row kept
    assert "standard MDETR RefCOCO testA split has 5657" in err
    assert list((tmp_path / "o").iterdir()) == [tmp_path / "o" / "RefCOCO_testA.tsv"]   # no temp files left


def test_qwen25_bytes(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    rc, out, _ = run(["--images_folder", images, "--annotations_files", ann, "--output_dir", tmp_path / "o",
                      "--qwen25"], capsys)
    assert rc == 0
    assert (tmp_path / "o" / "RefCOCO_testA_for_qwen25vl.tsv").read_bytes() == QWEN25
    assert "mode=qwen25" in out


def test_strict_exits_1_on_skips(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    rc, _, _ = run(["--images_folder", images, "--annotations_files", ann, "--output_dir", tmp_path / "o",
                    "--strict"], capsys)
    assert rc == 1
    assert (tmp_path / "o" / "RefCOCO_testA.tsv").read_bytes() == STANDARD


def test_stem_naming_and_both_modes_share_a_root(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    run(["--images_folder", images, "--annotations_files", ann, "--output_dir", tmp_path / "s", "--naming", "stem"],
        capsys)
    assert (tmp_path / "s" / "finetune_refcoco_testA.tsv").read_bytes() == STANDARD
    out = tmp_path / "h"
    run(["--images_folder", images, "--annotations_files", ann, "--output_dir", out], capsys)
    run(["--images_folder", images, "--annotations_files", ann, "--output_dir", out, "--qwen25"], capsys)
    assert sorted(p.name for p in out.iterdir()) == ["RefCOCO_testA.tsv", "RefCOCO_testA_for_qwen25vl.tsv"]


def test_output_names():
    assert output_name("finetune_refcoco+_testB", True, "harness") == ("RefCOCO+_testB_for_qwen25vl.tsv", None)
    assert output_name("finetune_refcocog_val", False, "harness") == ("RefCOCOg_val.tsv", None)
    assert output_name("finetune_refcocog_val", True, "stem") == ("finetune_refcocog_val.tsv", None)
    name, warn = output_name("my_split", True, "harness")
    assert name == "my_split_for_qwen25vl.tsv" and warn


def test_collision_detected_before_writing(tmp_path, images, capsys):
    a = fixture_json(tmp_path / "one")
    b = fixture_json(tmp_path / "two")
    ok = fixture_json(tmp_path / "ann", "finetune_refcoco_val")
    rc, _, err = run(["--images_folder", images, "--annotations_files", a, b, ok, "--output_dir", tmp_path / "o"],
                     capsys)
    assert rc == 1
    assert "name collision" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["RefCOCO_val.tsv"]   # the rest still converts


def test_file_errors_skip_the_file(tmp_path, images, capsys):
    bad = tmp_path / "ann" / "finetune_refcoco_testB.json"
    bad.parent.mkdir()
    bad.write_text("{not json", encoding="utf-8")
    dup = fixture_json(tmp_path / "ann", "finetune_refcoco_val",
                       images=[{"id": 1, "file_name": "a.jpg", "height": 1, "width": 1},
                               {"id": 1, "file_name": "a.jpg", "height": 1, "width": 1}], annotations=[])
    nolist = tmp_path / "ann" / "finetune_refcocog_val.json"
    nolist.write_text(json.dumps({"images": []}), encoding="utf-8")
    good = fixture_json(tmp_path / "ann")
    rc, _, err = run(["--images_folder", images, "--annotations_files", bad, dup, nolist, good,
                      "--output_dir", tmp_path / "o"], capsys)
    assert rc == 1
    assert "invalid JSON" in err and "duplicate images[].id" in err and "'annotations'" in err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["RefCOCO_testA.tsv"]


def test_row_skips_and_several_annotations(tmp_path, images, capsys):
    imgs = [{"id": 1, "file_name": "a.jpg", "height": 70, "width": 98, "caption": ""},
            {"id": 2, "file_name": "a.jpg", "height": 70},                     # lacks width
            {"id": 3, "file_name": "a.jpg", "height": 70, "width": 98, "caption": "x"},  # no annotation
            {"id": 4, "file_name": "a.jpg", "height": 70, "width": 98, "caption": "y"}]  # bad bbox
    anns = [{"image_id": 1, "bbox": [1, 2, 3, 4]}, {"image_id": 1, "bbox": [5, 6, 7, 8]},
            {"image_id": 4, "bbox": [1, 2, 3]}]
    ann = fixture_json(tmp_path / "ann", images=imgs, annotations=anns)
    rc, out, err = run(["--images_folder", images, "--annotations_files", ann, "--output_dir", tmp_path / "o"], capsys)
    assert rc == 0
    assert (tmp_path / "o" / "RefCOCO_testA.tsv").read_bytes() == HEADER + b"1\taW1nLWE=\t\t70\t98\t1 2 4 6 5 6 12 14\r\n"
    assert "1 rows, 3 skipped (0 missing images), 2 warnings" in out
    assert "empty caption" in err and "2 annotations" in err and "no annotation" in err


def test_verify_images(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), "red").save(buf, format="PNG")
    (folder / "a.jpg").write_bytes(buf.getvalue())
    (folder / "b.jpg").write_bytes(b"img-b!")
    imgs = [{"id": 1, "file_name": "a.jpg", "height": 70, "width": 98, "caption": "a"},
            {"id": 2, "file_name": "b.jpg", "height": 70, "width": 98, "caption": "b"}]
    anns = [{"image_id": 1, "bbox": [1, 2, 3, 4]}, {"image_id": 2, "bbox": [1, 2, 3, 4]}]
    ann = fixture_json(tmp_path / "ann", images=imgs, annotations=anns)
    rc, out, err = run(["--images_folder", folder, "--annotations_files", ann, "--output_dir", tmp_path / "o",
                        "--verify-images"], capsys)
    assert rc == 0 and "1 rows, 1 skipped" in out
    assert "undecodable" in err and "10x8 on disk" in err


def test_output_reads_back(tmp_path, images, capsys):
    ann = fixture_json(tmp_path / "ann")
    run(["--images_folder", images, "--annotations_files", ann, "--output_dir", tmp_path / "o"], capsys)
    data = read_tsv("RefCOCO_testA", root=tmp_path / "o", grounding=True)
    assert list(data.rows["index"]) == [11, 12, 13, 15]
    assert list(data.rows["question"]) == ['man in "red" shirt', "left\tdog", "null", "far right"]
    assert list(data.rows["width"]) == [98, 98, 90, 90]


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--images_folder", str(tmp_path / "nope"), "--annotations_files", "x.json", "--output_dir", "o"])
    assert exc.value.code == 2


def test_data_tools_wrapper(tmp_path, images):
    ann = fixture_json(tmp_path / "ann")
    script = Path(__file__).resolve().parents[1] / "data_tools" / "convert_to_tsv.py"
    proc = subprocess.run([sys.executable, str(script), "--images_folder", str(images), "--annotations_files",
                           str(ann), "--output_dir", str(tmp_path / "o"), "--qwen25", "--naming", "stem"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "finetune_refcoco_testA.tsv").read_bytes() == QWEN25
