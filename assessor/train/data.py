"""IQA datasets as they ship, read into one list of (image path, MOS on 1..5).

Every dataset has its own scale; training rewards and the answer format use 1..5, so each loader
maps its MOS with a fixed, documented rule (SRCC does not care; the score reward does):

======================  ==============================================  ===========================
dataset                 labels (as released)                            MOS -> 1..5
======================  ==============================================  ===========================
KonIQ-10k ``koniq``     ``koniq10k_*.csv``: image_name, MOS (1-5),      MOS as is (MOS_zscore 0-100
                        MOS_zscore, optional ``set`` column;            -> 1 + 4 z / 100 if no MOS)
                        images in ``1024x768/`` (or ``512x384/``)
SPAQ ``spaq``           ``Annotations/MOS and Image attribute           1 + 4 MOS / 100
                        scores.xlsx`` (or a CSV export): Image name,
                        MOS (0-100); images in ``TestImage/``
KADID-10k ``kadid``     ``dmos.csv``: dist_img, ref_img, dmos (1-5,     dmos as is
                        higher is better despite the name); ``images/``
LIVE Challenge          ``Data/AllImages_release.mat`` +                1 + 4 MOS / 100; the 7
``livec``               ``Data/AllMOS_release.mat`` (MOS 0-100);        training images (the first
                        ``Images/``                                      7) are left out, as usual
PIPAL ``pipal``         ``Train_Label/*.txt``: name,elo per line;       1 + 4 (elo - min) / (max -
                        images anywhere under root (Distortion_*)       min) over the loaded labels
                                                                        (Elo has no fixed scale)
AGIQA-3K ``agiqa3k``    ``data.csv``: name, mos_quality (0-5);          1 + 4 mos / 5
                        images anywhere under root
CSIQ ``csiq``           ``csiq.DMOS.xlsx`` (sheet all_by_image: image,  5 - 4 dmos (DMOS 0-1,
                        dst_type, dst_lev, dmos) or a CSV with image,    lower is better)
                        dmos; images in ``dst_imgs/<type>/``
folder ``folder``       a CSV or JSON of ``image, mos`` (+ optional     linear from mos_range
                        ``regions``) next to an image folder            [worst, best] (default [1, 5])
======================  ==============================================  ===========================

A missing image is skipped and counted (``missing``); an unreadable one is skipped and counted
when it is read (``corrupt``). A missing label file is an error that says where it was looked for.
Splits: KonIQ's own ``set`` column where present; everything else is split by content (the
reference image for KADID, CSIQ and PIPAL, so one scene never lands on both sides), by a stable
hash, ``test_fraction`` of the groups to test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import ImageError, load_image
from .config import DatasetSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message says which file was expected and where."""


@dataclass
class IQASample:
    path: str
    mos: float  # on 1..5, higher is better
    raw_mos: float  # as the dataset gives it
    name: str  # the image's name in the label file
    dataset: str
    group: str = ""  # the content it shows (reference image), for splitting
    regions: list[dict[str, Any]] | None = None


@dataclass
class IQADataset:
    name: str
    samples: list[IQASample]
    mapping: str  # how raw MOS became 1..5, in words
    missing: int = 0  # images named in the labels but absent on disk
    corrupt: int = 0  # images that could not be decoded (counted when read)
    total_labels: int = 0
    skipped_names: list[str] = field(default_factory=list)  # the first few missing ones, for messages

    def __len__(self) -> int:
        return len(self.samples)

    def summary(self) -> str:
        text = f"{self.name}: {len(self.samples)} images ({self.mapping})"
        if self.missing:
            shown = ", ".join(self.skipped_names[:3])
            text += f"; {self.missing} missing on disk, skipped (e.g. {shown})"
        if self.corrupt:
            text += f"; {self.corrupt} unreadable, skipped"
        return text


# --------------------------------------------------------------------------------------------
# small readers: CSV, xlsx (no openpyxl needed), MATLAB (scipy, only for LIVE Challenge)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(4096)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        return [
            {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(f, dialect=dialect)
        ]


_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def _column_index(ref: str) -> int:
    letters = re.match(r"[A-Z]+", ref).group(0)
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - 64)
    return index - 1


def read_xlsx_rows(path: Path, sheet: str | None = None) -> list[list[Any]]:
    """The cells of one sheet of an .xlsx file as rows of values (strings or floats).

    An .xlsx is a zip of XML files; reading values needs no spreadsheet library."""
    with zipfile.ZipFile(path) as z:
        shared: list[str] = []
        if "xl/sharedStrings.xml" in z.namelist():
            root = ET.fromstring(z.read("xl/sharedStrings.xml"))
            for si in root.findall("m:si", _NS):
                shared.append("".join(t.text or "" for t in si.iter(f"{{{_NS['m']}}}t")))
        book = ET.fromstring(z.read("xl/workbook.xml"))
        sheets = [(s.get("name"), s.get(_REL)) for s in book.find("m:sheets", _NS)]
        rels = ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))
        targets = {r.get("Id"): r.get("Target") for r in rels}
        chosen = sheets[0]
        if sheet is not None:
            named = [s for s in sheets if s[0] == sheet]
            if not named:
                raise DatasetError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(s[0] for s in sheets)})")
            chosen = named[0]
        target = targets[chosen[1]].lstrip("/")
        target = target if target.startswith("xl/") else f"xl/{target}"
        data = ET.fromstring(z.read(target))
    rows = []
    for row in data.iter(f"{{{_NS['m']}}}row"):
        values: dict[int, Any] = {}
        for c in row.findall("m:c", _NS):
            kind = c.get("t")
            v = c.find("m:v", _NS)
            if kind == "inlineStr":
                value: Any = "".join(t.text or "" for t in c.iter(f"{{{_NS['m']}}}t"))
            elif v is None:
                continue
            elif kind == "s":
                value = shared[int(v.text)]
            elif kind in ("str", "e"):
                value = v.text or ""
            elif kind == "b":
                value = v.text == "1"
            else:
                value = float(v.text)
            values[_column_index(c.get("r"))] = value
        if values:
            rows.append([values.get(i, "") for i in range(max(values) + 1)])
    return rows


def _records(header: list[Any], rows: Iterable[list[Any]]) -> list[dict[str, Any]]:
    keys = [str(h).strip() for h in header]
    return [{k: (row[i] if i < len(row) else "") for i, k in enumerate(keys)} for row in rows]


def read_table(path: Path, sheet: str | None = None) -> list[dict[str, Any]]:
    """Rows of a CSV, JSON (a list of objects) or .xlsx file as dicts keyed by column name."""
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        rows = read_xlsx_rows(path, sheet)
        if not rows:
            return []
        return _records(rows[0], rows[1:])
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # {"image.jpg": 3.2, ...} or {"samples": [...]}
            data = data.get("samples", [{"image": k, "mos": v} for k, v in data.items()])
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a list of {{image, mos}} objects")
        return data
    return read_csv_rows(path)


def _pick(row: dict[str, Any], names: Iterable[str], where: str) -> Any:
    lower = {str(k).strip().lower(): v for k, v in row.items()}
    for name in names:
        if name.lower() in lower and lower[name.lower()] not in ("", None):
            return lower[name.lower()]
    raise DatasetError(f"{where}: no column {' / '.join(names)} (columns: {', '.join(map(str, row))})")


def _float(value: Any, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {value!r} is not a number") from None
    if not np.isfinite(out):
        raise DatasetError(f"{where}: {value!r} is not a finite number")
    return out


# --------------------------------------------------------------------------------------------
# finding files


class FileIndex:
    """Image files under a folder by lower-case base name (datasets nest images differently)."""

    def __init__(self, root: Path):
        self.by_name: dict[str, str] = {}
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    self.by_name.setdefault(f.lower(), os.path.join(dirpath, f))

    def find(self, name: str) -> str | None:
        return self.by_name.get(os.path.basename(name).lower())


def _first_existing(root: Path, candidates: Iterable[str], what: str, fix: str) -> Path:
    tried = []
    for c in candidates:
        matches = sorted(root.glob(c))
        if matches:
            return matches[0]
        tried.append(str(root / c))
    raise DatasetError(f"no {what} found (looked for {', '.join(tried)}); {fix}")


def _check_root(spec: DatasetSpec) -> Path:
    root = Path(os.path.expanduser(spec.root))
    if not root.is_dir():
        raise DatasetError(
            f"{spec.label}: dataset folder {str(root)!r} does not exist; set root to its folder"
        )
    return root


def _label_path(spec: DatasetSpec, root: Path, candidates: Iterable[str], what: str, fix: str) -> Path:
    if spec.labels:
        path = Path(spec.labels)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DatasetError(f"{spec.label}: label file {str(path)!r} does not exist")
        return path
    return _first_existing(root, candidates, f"{spec.label} {what}", fix)


def linear_to_5(value: float, worst: float, best: float) -> float:
    """Map ``value`` on a [worst, best] scale (either direction) to 1..5, clipped."""
    t = (value - worst) / (best - worst)
    return float(np.clip(1.0 + 4.0 * t, 1.0, 5.0))


# --------------------------------------------------------------------------------------------
# the layouts: each returns (rows of (name, raw mos, group, regions, official split), mapping, resolver)

Row = tuple[str, float, str, Any, str | None]


def _koniq(spec: DatasetSpec, root: Path):
    path = _label_path(
        spec,
        root,
        [
            "koniq10k_distributions_sets.csv",
            "koniq10k_scores_and_distributions.csv",
            "koniq10k_*.csv",
            "*/koniq10k_*.csv",
        ],
        "label file",
        "download koniq10k_scores_and_distributions.csv from the KonIQ-10k site into root",
    )
    table = read_table(path)
    rows: list[Row] = []
    uses_z = bool(table) and not any(k.lower() == "mos" for k in table[0])
    for i, r in enumerate(table):
        where = f"{path.name} row {i + 2}"
        name = str(_pick(r, ["image_name", "image", "name"], where))
        if uses_z:
            mos = linear_to_5(_float(_pick(r, ["MOS_zscore"], where), where), 0.0, 100.0)
        else:
            mos = _float(_pick(r, ["MOS"], where), where)
        split = {"training": "train", "train": "train", "test": "test"}.get(
            str(r.get("set", "")).strip().lower(), "other" if r.get("set") else None
        )
        rows.append((name, mos, name, None, split))
    mapping = "MOS_zscore 0-100 -> 1 + 4 z / 100" if uses_z else "MOS 1-5 as is"
    folder = spec.images or next(
        (d for d in ("1024x768", "512x384", "images") if (root / d).is_dir()), "1024x768"
    )

    def resolve(raw: float) -> float:
        return float(np.clip(raw, 1.0, 5.0))

    return rows, mapping, resolve, root / folder


def _spaq(spec: DatasetSpec, root: Path):
    path = _label_path(
        spec,
        root,
        [
            "Annotations/MOS and Image attribute scores.xlsx",
            "Annotations/*.xlsx",
            "*.xlsx",
            "Annotations/*.csv",
            "*.csv",
        ],
        "label file",
        "put SPAQ's Annotations/MOS and Image attribute scores.xlsx (or a CSV export) under root",
    )
    table = read_table(path)
    rows = []
    for i, r in enumerate(table):
        where = f"{path.name} row {i + 2}"
        name = str(_pick(r, ["Image name", "image_name", "image", "name"], where))
        rows.append((name, _float(_pick(r, ["MOS", "mos"], where), where), name, None, None))
    folder = spec.images or ("TestImage" if (root / "TestImage").is_dir() else ".")
    return rows, "MOS 0-100 -> 1 + 4 MOS / 100", lambda raw: linear_to_5(raw, 0.0, 100.0), root / folder


def _kadid(spec: DatasetSpec, root: Path):
    path = _label_path(
        spec,
        root,
        ["dmos.csv", "kadid10k/dmos.csv", "*/dmos.csv"],
        "dmos.csv",
        "unpack kadid10k.zip so that root holds dmos.csv and images/",
    )
    table = read_table(path)
    rows = []
    for i, r in enumerate(table):
        where = f"{path.name} row {i + 2}"
        name = str(_pick(r, ["dist_img", "image", "name"], where))
        ref = str(r.get("ref_img") or name)
        rows.append((name, _float(_pick(r, ["dmos", "mos"], where), where), ref, None, None))
    folder = spec.images or "images"
    base = path.parent
    return rows, "dmos 1-5 (higher is better) as is", lambda raw: float(np.clip(raw, 1.0, 5.0)), base / folder


def _livec(spec: DatasetSpec, root: Path):
    data = root / "Data" if (root / "Data").is_dir() else root
    names_file = data / "AllImages_release.mat"
    mos_file = data / "AllMOS_release.mat"
    if spec.labels:  # a CSV export: image, mos (0-100)
        path = _label_path(spec, root, [], "labels", "")
        table = read_table(path)
        rows = []
        for i, r in enumerate(table):
            where = f"{path.name} row {i + 2}"
            name = str(_pick(r, ["image", "image_name", "name"], where))
            rows.append((name, _float(_pick(r, ["mos", "MOS"], where), where), name, None, None))
    else:
        for f in (names_file, mos_file):
            if not f.is_file():
                raise DatasetError(
                    f"{spec.label}: {f} does not exist; root must be ChallengeDB_release (with Data/ and Images/)"
                )
        try:
            from scipy.io import loadmat
        except ImportError:
            raise DatasetError(
                "reading LIVE Challenge's .mat labels needs scipy: pip install scipy "
                "(or export them to a CSV of image, mos and set labels: to it)"
            ) from None
        names = [str(np.ravel(n)[0]) for n in np.ravel(loadmat(names_file)["AllImages_release"])]
        mos = np.ravel(loadmat(mos_file)["AllMOS_release"]).astype(np.float64)
        if len(names) != len(mos):
            raise DatasetError(f"{spec.label}: {len(names)} image names but {len(mos)} MOS values")
        rows = [(n, float(m), n, None, None) for n, m in zip(names, mos)][7:]  # the 7 training images
    folder = spec.images or "Images"
    return rows, "MOS 0-100 -> 1 + 4 MOS / 100", lambda raw: linear_to_5(raw, 0.0, 100.0), root / folder


def _pipal(spec: DatasetSpec, root: Path):
    if spec.labels:
        files = [Path(spec.labels) if Path(spec.labels).is_absolute() else root / spec.labels]
    else:
        label_dir = next(
            (root / d for d in ("Train_Label", "train_label", "Label") if (root / d).is_dir()), None
        )
        if label_dir is None:
            raise DatasetError(
                f"{spec.label}: no Train_Label/ folder in {root}; unpack PIPAL's training labels there"
            )
        files = sorted(label_dir.glob("*.txt"))
    rows = []
    for f in files:
        if not f.is_file():
            raise DatasetError(f"{spec.label}: label file {str(f)!r} does not exist")
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 2:
                raise DatasetError(f"{f.name} line {i + 1}: expected 'image,elo', got {line!r}")
            name = parts[0]
            rows.append((name, _float(parts[1], f"{f.name} line {i + 1}"), name.split("_")[0], None, None))
    if not rows:
        raise DatasetError(f"{spec.label}: the PIPAL label files hold no scores")
    lo = min(r[1] for r in rows)
    hi = max(r[1] for r in rows)
    if hi == lo:
        hi = lo + 1.0
    mapping = f"Elo {lo:.1f}..{hi:.1f} (min..max of these labels) -> 1..5"
    return rows, mapping, lambda raw: linear_to_5(raw, lo, hi), None


def _agiqa3k(spec: DatasetSpec, root: Path):
    path = _label_path(
        spec, root, ["data.csv", "*/data.csv"], "data.csv", "unpack AGIQA-3K so that root holds data.csv"
    )
    table = read_table(path)
    rows = []
    for i, r in enumerate(table):
        where = f"{path.name} row {i + 2}"
        name = str(_pick(r, ["name", "image"], where))
        rows.append((name, _float(_pick(r, ["mos_quality", "mos"], where), where), name, None, None))
    return rows, "mos_quality 0-5 -> 1 + 4 mos / 5", lambda raw: linear_to_5(raw, 0.0, 5.0), None


CSIQ_TYPES = {  # dst_type in the DMOS sheet -> (folder, file tag)
    "noise": ("awgn", "awgn"),
    "awgn": ("awgn", "awgn"),
    "jpeg": ("jpeg", "jpeg"),
    "jpeg 2000": ("jpeg2000", "jpeg2000"),
    "jpeg2000": ("jpeg2000", "jpeg2000"),
    "f noise": ("fnoise", "fnoise"),
    "fnoise": ("fnoise", "fnoise"),
    "blur": ("blur", "blur"),
    "contrast": ("contrast", "contrast"),
}


def _csiq(spec: DatasetSpec, root: Path):
    path = _label_path(
        spec,
        root,
        ["csiq.DMOS.xlsx", "*.xlsx", "csiq*.csv", "*.csv", "csiq*.txt"],
        "label file",
        "put csiq.DMOS.xlsx (or a CSV of image, dmos) under root",
    )
    table = read_table(path, sheet="all_by_image") if path.suffix.lower() == ".xlsx" else read_table(path)
    rows = []
    for i, r in enumerate(table):
        where = f"{path.name} row {i + 2}"
        try:
            image = str(_pick(r, ["image"], where)).strip()
            kind = str(_pick(r, ["dst_type"], where)).strip().lower()
            level = int(_float(_pick(r, ["dst_lev"], where), where))
        except DatasetError:
            name = str(_pick(r, ["dis_img_name", "dist_img", "image", "name"], where))
            ref = str(r.get("ref_img_name") or r.get("ref_img") or name.split(".")[0])
            rows.append((name, _float(_pick(r, ["dmos"], where), where), ref, None, None))
            continue
        if image.endswith(".0"):  # a numeric name read as a float from the sheet
            image = image[:-2]
        if kind not in CSIQ_TYPES:
            raise DatasetError(f"{where}: unknown CSIQ distortion type {kind!r}")
        tag = CSIQ_TYPES[kind][1]
        rows.append(
            (f"{image}.{tag}.{level}.png", _float(_pick(r, ["dmos"], where), where), image, None, None)
        )
    return rows, "DMOS 0-1 (lower is better) -> 5 - 4 dmos", lambda raw: linear_to_5(raw, 1.0, 0.0), None


def _folder(spec: DatasetSpec, root: Path):
    path = _label_path(
        spec,
        root,
        ["labels.csv", "labels.json", "mos.csv", "*.csv", "*.json"],
        "label file",
        "put a CSV or JSON of image, mos in root (or set labels:)",
    )
    table = read_table(path)
    worst, best = (spec.mos_range or [1.0, 5.0])[:2]
    rows = []
    for i, r in enumerate(table):
        where = f"{path.name} row {i + 2}"
        if not isinstance(r, dict):
            raise DatasetError(f"{where}: expected an object with image and mos")
        name = str(_pick(r, ["image", "image_name", "filename", "file", "path", "name"], where))
        regions = r.get("regions")
        if isinstance(regions, str) and regions.strip():
            try:
                regions = json.loads(regions)
            except ValueError:
                raise DatasetError(f"{where}: regions is not JSON: {regions[:60]!r}") from None
        rows.append(
            (name, _float(_pick(r, ["mos", "score", "MOS"], where), where), name, regions or None, None)
        )
    mapping = f"MOS {worst:g}..{best:g} -> 1..5" + (" (lower is better)" if worst > best else "")
    folder = root / spec.images if spec.images else path.parent
    return rows, mapping, lambda raw: linear_to_5(raw, worst, best), folder


LOADERS: dict[str, Callable] = {
    "koniq": _koniq,
    "spaq": _spaq,
    "kadid": _kadid,
    "livec": _livec,
    "pipal": _pipal,
    "agiqa3k": _agiqa3k,
    "csiq": _csiq,
    "folder": _folder,
}


def _in_test(group: str, fraction: float) -> bool:
    digest = hashlib.sha1(group.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_dataset(spec: DatasetSpec) -> IQADataset:
    """Read a dataset's labels, map its MOS to 1..5, keep the split, skip (and count) missing files."""
    root = _check_root(spec)
    rows, mapping, to_5, folder = LOADERS[spec.layout](spec, root)
    index = None
    if folder is None or not Path(folder).is_dir():
        index = FileIndex(root)
    out = IQADataset(spec.label, [], mapping, total_labels=len(rows))
    for name, raw, group, regions, official in rows:
        if spec.split != "all":
            side = (
                official
                if official is not None
                else ("test" if _in_test(group, spec.test_fraction) else "train")
            )
            if side != spec.split:
                continue
        path = None
        if index is None:
            candidate = Path(folder) / name
            if candidate.is_file():
                path = str(candidate)
            else:  # names with different case or extension layouts: search once, lazily
                index = FileIndex(root)
        if path is None and index is not None:
            path = index.find(name)
        if path is None:
            out.missing += 1
            if len(out.skipped_names) < 10:
                out.skipped_names.append(name)
            continue
        out.samples.append(IQASample(path, to_5(raw), raw, name, spec.label, group, regions))
        if spec.limit is not None and len(out.samples) >= spec.limit:
            break
    if not out.samples:
        where = folder if folder is not None else root
        raise DatasetError(
            f"{spec.label}: none of the {len(rows)} labelled images were found under {where} "
            f"(first: {rows[0][0] if rows else '-'}); check root/images"
        )
    return out


def check_images(dataset: IQADataset) -> IQADataset:
    """Decode every image once; drop (and count) those that cannot be read."""
    kept = []
    for s in dataset.samples:
        try:
            load_image(s.path)
        except ImageError:
            dataset.corrupt += 1
            continue
        kept.append(s)
    dataset.samples = kept
    return dataset


def read_rgb(path: str, max_side: int | None = None) -> np.ndarray:
    """An image as RGB uint8, its longer side at most ``max_side`` (area resampling)."""
    rgb = load_image(path).rgb
    if max_side and max(rgb.shape[:2]) > max_side:
        import cv2

        s = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb


def load_datasets(specs: list[DatasetSpec], check: bool = False) -> list[IQADataset]:
    out = []
    for spec in specs:
        ds = load_dataset(spec)
        out.append(check_images(ds) if check else ds)
    return out
