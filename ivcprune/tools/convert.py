"""MDETR RefCOCO annotations -> VLMEvalKit grounding TSV (docs/HARNESS.md §3).

Rows are byte-identical to the official converter's: csv.writer with a tab delimiter (CRLF,
minimal quoting), raw image bytes in base64, numbers printed with str().  What we add is
validation, collision checks before writing, atomic writes and a summary.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HEADER = ["index", "image", "question", "height", "width", "answer"]
_STEM_RE = re.compile(r"^finetune_(refcoco|refcoco\+|refcocog)_(.+)$")
_PRETTY = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}
MDETR_COUNTS = {
    "RefCOCO": {"val": 10834, "testA": 5657, "testB": 5095},
    "RefCOCO+": {"val": 10758, "testA": 5726, "testB": 4889},
    "RefCOCOg": {"val": 4896, "test": 9602},
}
_LISTED = 20


class FileError(Exception):
    """The whole annotation file is unusable; it is skipped and the converter exits 1."""


@dataclass
class FileReport:
    """What happened to one annotation file."""

    source: Path
    output: Path | None = None
    rows: int = 0
    skipped: list = field(default_factory=list)      # (id, reason)
    missing_images: int = 0
    warnings: list = field(default_factory=list)     # messages
    error: str | None = None
    size: int = 0

    def skip_reasons(self) -> str:
        """``reason N, reason M`` over all skipped rows, most frequent first."""
        counts: dict = {}
        for _, reason in self.skipped:
            kind = reason.split(":", 1)[0].split(" (", 1)[0]  # the reason without its details
            counts[kind] = counts.get(kind, 0) + 1
        return ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def output_name(stem: str, qwen25: bool, naming: str) -> tuple[str, str | None]:
    """Output file name for an annotation stem, plus a warning for stems we do not recognise."""
    if naming == "stem":
        return f"{stem}.tsv", None
    m = _STEM_RE.match(stem)
    suffix = "_for_qwen25vl" if qwen25 else ""
    if not m:
        return f"{stem}{suffix}.tsv", f"{stem}: not a finetune_refcoco*_<split> name; output keeps the stem"
    return f"{_PRETTY[m.group(1)]}_{m.group(2)}{suffix}.tsv", None


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def corners(bbox, qwen25: bool, width, height, patch: int) -> list:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2]; --qwen25 rescales to the N-pixel grid (round half even)."""
    x, y, w, h = bbox
    c = [x, y, x + w, y + h]
    if not qwen25:
        return c
    sx = (round(width / patch) * patch) / width
    sy = (round(height / patch) * patch) / height
    return [int(round(c[0] * sx)), int(round(c[1] * sy)), int(round(c[2] * sx)), int(round(c[3] * sy))]


def _load_json(path: Path) -> tuple[list, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise FileError(f"{path}: needs 'images' and 'annotations' lists")
    seen, dups = set(), []
    for entry in data["images"]:
        i = entry.get("id") if isinstance(entry, dict) else None
        if i is None:
            continue
        if i in seen:
            dups.append(i)
        seen.add(i)
    if dups:
        raise FileError(f"{path}: duplicate images[].id: {dups[:_LISTED]}")
    by_image: dict = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict) and "image_id" in ann:
            by_image.setdefault(ann["image_id"], []).append(ann)
    return data["images"], by_image


def _check_image(path: Path, entry: dict, verify: bool) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, skip reason, warning) for one image file."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None, "missing image", None
    if not verify:
        return raw, None, None
    from PIL import Image
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            size = img.size
    except Exception as exc:
        return None, f"undecodable image ({type(exc).__name__})", None
    if size != (entry["width"], entry["height"]):
        return raw, None, f"id {entry['id']}: image is {size[0]}x{size[1]} on disk, JSON says {entry['width']}x{entry['height']}"
    return raw, None, None


def _row_warnings(entry: dict, anns: list, boxes: list, qwen25: bool) -> list[str]:
    i, W, H = entry["id"], entry["width"], entry["height"]
    out = []
    if not entry.get("caption"):
        out.append(f"id {i}: empty caption")
    if W <= 0 or H <= 0:
        out.append(f"id {i}: image size {W}x{H} is not positive")
    if len(anns) > 1:
        out.append(f"id {i}: {len(anns)} annotations (concatenated; evaluation uses the first)")
    for ann, box in zip(anns, boxes):
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            out.append(f"id {i}: box w or h <= 0 ({ann['bbox']})")
        if x < 0 or y < 0 or x + w > W or y + h > H:
            out.append(f"id {i}: box {ann['bbox']} outside the {W}x{H} image")
        if qwen25 and (box[0] == box[2] or box[1] == box[3]):
            out.append(f"id {i}: zero-area box after --qwen25 ({box})")
    return out


def _row(entry, by_image, images_folder: Path, qwen25: bool, patch: int, verify: bool, report: FileReport):
    """The output row for one images[] entry, or None (skipped and recorded)."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or any(k not in entry for k in ("id", "file_name", "height", "width")):
        report.skipped.append((ident, "entry lacks id, file_name, height or width"))
        return None
    if not (_is_num(entry["height"]) and _is_num(entry["width"])):
        report.skipped.append((ident, "height/width not numbers"))
        return None
    anns = by_image.get(ident, [])
    if not anns:
        report.skipped.append((ident, "no annotation"))
        return None
    bad = [a.get("bbox") for a in anns
           if not (isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4 and all(map(_is_num, a["bbox"])))]
    if bad:
        report.skipped.append((ident, f"bbox is not 4 finite numbers: {bad[0]!r}"))
        return None
    if qwen25 and (entry["width"] == 0 or entry["height"] == 0):
        report.skipped.append((ident, "zero image size cannot be rescaled with --qwen25"))
        return None
    raw, reason, warning = _check_image(images_folder / entry["file_name"], entry, verify)
    if raw is None:
        report.skipped.append((ident, reason))
        report.missing_images += reason == "missing image"
        return None
    boxes = [corners(a["bbox"], qwen25, entry["width"], entry["height"], patch) for a in anns]
    report.warnings += ([warning] if warning else []) + _row_warnings(entry, anns, boxes, qwen25)
    caption = entry.get("caption")
    answer = " ".join(str(v) for box in boxes for v in box)
    return [ident, base64.b64encode(raw).decode("ascii"), "" if caption is None else caption,
            entry["height"], entry["width"], answer]


def _progress(total: int, label: str, quiet: bool):
    """tqdm on an interactive stderr, otherwise one line per 1,000 rows."""
    if not quiet and sys.stderr.isatty():
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, desc=label, unit="row", file=sys.stderr)
            return bar.update, bar.close
        except ImportError:
            pass
    count = [0]

    def update(n=1):
        count[0] += n
        if not quiet and count[0] % 1000 == 0:
            print(f"{label}: {count[0]}/{total} rows", file=sys.stderr)
    return update, (lambda: None)


def count_rows(path: Path) -> int:
    """Rows of an existing TSV (header excluded; quoted fields may span lines)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return max(sum(1 for _ in csv.reader(f, delimiter="\t")) - 1, 0)


def convert_file(source: Path, output: Path, images_folder: Path, *, qwen25: bool = False, patch: int = 28,
                 verify: bool = False, quiet: bool = False, force: bool = False) -> FileReport:
    """Convert one annotation file; write to a temporary file and rename it into place.

    Nothing replaces the output when no row could be written, and an existing TSV with more rows is kept unless
    ``force`` (a wrong --images_folder must not wipe good data)."""
    report = FileReport(source=source, output=output)
    try:
        images, by_image = _load_json(source)
    except FileError as exc:
        report.error = str(exc)
        return report
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    update, close = _progress(len(images), output.name, quiet)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(HEADER)
            for entry in images:
                row = _row(entry, by_image, images_folder, qwen25, patch, verify, report)
                if row is not None:
                    writer.writerow(row)
                    report.rows += 1
                update(1)
            f.flush()
            os.fsync(f.fileno())
        refusal = _refuse_replace(report, output, len(images), images_folder, force)
        if refusal:
            report.error = refusal
            tmp.unlink(missing_ok=True)
            return report
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        close()
    report.size = output.stat().st_size
    return report


def _refuse_replace(report: FileReport, output: Path, entries: int, images_folder: Path, force: bool) -> str | None:
    """Why the new file must not replace ``output`` (no rows; fewer rows than the existing file), or None."""
    if report.rows == 0:
        hint = ""
        if report.missing_images == len(report.skipped) and report.skipped:
            hint = f"; is --images_folder {images_folder} the COCO train2014 folder?"
        kept = " (the existing file is kept)" if output.exists() else ""
        return (f"{output.name}: no row could be written: all {entries} entries were skipped "
                f"({report.skip_reasons() or 'no entries'}){hint}{kept}")
    if output.exists() and not force:
        old = count_rows(output)
        if old > report.rows:
            return (f"{output.name}: refusing to replace the existing file ({old} rows) with {report.rows} rows "
                    f"({len(report.skipped)} skipped: {report.skip_reasons()}); pass --force to replace it")
    return None


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def _expected_count(stem: str) -> tuple[str, int] | None:
    m = _STEM_RE.match(stem)
    if not m:
        return None
    pretty, split = _PRETTY[m.group(1)], m.group(2)
    n = MDETR_COUNTS[pretty].get(split)
    return None if n is None else (f"{pretty} {split}", n)


def _print_report(rep: FileReport, mode: str, quiet: bool) -> None:
    err = sys.stderr
    for ident, reason in rep.skipped[:_LISTED]:
        print(f"  skipped id {ident}: {reason}", file=err)
    if len(rep.skipped) > _LISTED:
        print(f"  ... {len(rep.skipped) - _LISTED} more skipped rows", file=err)
    for msg in rep.warnings[:_LISTED]:
        print(f"  warning: {msg}", file=err)
    if len(rep.warnings) > _LISTED:
        print(f"  ... {len(rep.warnings) - _LISTED} more warnings", file=err)
    if not quiet:
        written = _human(rep.size) if not rep.error else "not written"
        why = f"; skipped by reason: {rep.skip_reasons()}" if rep.skipped else ""
        print(f"{rep.output.name}: {rep.rows} rows, {len(rep.skipped)} skipped ({rep.missing_images} missing images), "
              f"{len(rep.warnings)} warnings, mode={mode}, {written}{why}")


def convert(annotation_files, images_folder, output_dir, *, qwen25: bool = False, patch_size: int = 28,
            naming: str = "harness", verify_images: bool = False, quiet: bool = False,
            force: bool = False) -> list[FileReport]:
    """Convert every file; collisions and bad files are reported, never half-written."""
    images_folder, output_dir = Path(images_folder), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mode = "qwen25" if qwen25 else "standard"
    planned: dict[str, list[Path]] = {}
    for src in map(Path, annotation_files):
        name, warn = output_name(src.stem, qwen25, naming)
        if warn:
            print(f"warning: {warn}", file=sys.stderr)
        planned.setdefault(name, []).append(src)
    reports = []
    for name, sources in planned.items():
        if len(sources) > 1:
            msg = f"name collision: {', '.join(map(str, sources))} all map to {name}; none of them is written"
            reports += [FileReport(source=s, error=msg) for s in sources]
            print(f"error: {msg}", file=sys.stderr)
    for name, sources in planned.items():
        if len(sources) != 1:
            continue
        src = sources[0]
        rep = convert_file(src, output_dir / name, images_folder, qwen25=qwen25, patch=patch_size,
                           verify=verify_images, quiet=quiet, force=force)
        reports.append(rep)
        if rep.error:
            if rep.rows or rep.skipped:  # converted but not written: say what was skipped and why
                _print_report(rep, mode, quiet)
                print(f"error: {rep.error}", file=sys.stderr)
            else:
                print(f"error: {rep.error}; file skipped", file=sys.stderr)
            continue
        _print_report(rep, mode, quiet)
        expected = _expected_count(src.stem)
        if expected and expected[1] != rep.rows and not quiet:
            print(f"warning: {name} has {rep.rows} rows; the standard MDETR {expected[0]} split has {expected[1]}",
                  file=sys.stderr)
    if not quiet:
        ok = [r for r in reports if not r.error]
        print(f"total: {sum(r.rows for r in ok)} rows, {sum(len(r.skipped) for r in ok)} skipped, "
              f"{sum(len(r.warnings) for r in ok)} warnings in {len(ok)} files"
              f" ({len(reports) - len(ok)} file errors)")
    return reports


def build_parser(prog: str = "ivcp convert") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Convert MDETR RefCOCO/+/g annotations to VLMEvalKit TSV.")
    p.add_argument("--images_folder", required=True, help="COCO train2014 images")
    p.add_argument("--annotations_files", required=True, nargs="+", help="MDETR finetune_*.json files")
    p.add_argument("--output_dir", required=True, help="created if missing")
    p.add_argument("--qwen25", action="store_true", help="rescale GT boxes to the Qwen2.5-VL patch grid")
    p.add_argument("--patch_size", type=int, default=28)
    p.add_argument("--naming", choices=("harness", "stem"), default="harness",
                   help="harness: RefCOCO_<split>[_for_qwen25vl].tsv; stem: the official <stem>.tsv")
    p.add_argument("--verify-images", dest="verify_images", action="store_true",
                   help="decode every image, skip undecodable ones, warn on size mismatches")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row was skipped")
    p.add_argument("--force", action="store_true",
                   help="replace an existing TSV even when the new one has fewer rows")
    return p


def cli_main(argv: list[str] | None = None, prog: str = "ivcp convert") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not Path(args.images_folder).is_dir():
        parser.error(f"--images_folder {args.images_folder} is not a directory")
    missing = [f for f in args.annotations_files if not Path(f).is_file()]
    if missing:
        parser.error(f"annotation file(s) not found: {', '.join(missing)}")
    if args.patch_size <= 0:
        parser.error("--patch_size must be positive")
    reports = convert(args.annotations_files, args.images_folder, args.output_dir, qwen25=args.qwen25,
                      patch_size=args.patch_size, naming=args.naming, verify_images=args.verify_images,
                      force=args.force)
    failed = any(r.error for r in reports)
    skipped = any(r.skipped for r in reports)
    return 1 if failed or (args.strict and skipped) else 0


if __name__ == "__main__":
    sys.exit(cli_main())
