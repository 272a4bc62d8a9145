"""Dataset loaders on tiny fake datasets laid out as the public releases are: labels read, MOS
mapped to 1..5, official and content splits, missing and corrupt images skipped and counted,
and clear errors when labels are not where they should be."""

from __future__ import annotations

import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from PIL import Image

from assessor.imageio import ImageError
from assessor.train.config import DatasetSpec
from assessor.train.data import DatasetError, check_images, load_dataset, read_rgb, read_xlsx_rows


def png(path: Path, value: int = 128, size=(24, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _col(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(65 + r) + name
    return name


def write_xlsx(path: Path, sheets: dict[str, list[list]]) -> None:
    """A minimal but valid .xlsx: shared strings for text, numbers as numbers."""
    shared: list[str] = []
    sheet_xml = []
    for rows in sheets.values():
        out = []
        for r, row in enumerate(rows, start=1):
            cells = []
            for c, v in enumerate(row):
                ref = f"{_col(c)}{r}"
                if isinstance(v, str):
                    if v not in shared:
                        shared.append(v)
                    cells.append(f'<c r="{ref}" t="s"><v>{shared.index(v)}</v></c>')
                else:
                    cells.append(f'<c r="{ref}"><v>{v}</v></c>')
            out.append(f'<row r="{r}">{"".join(cells)}</row>')
        sheet_xml.append(
            '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            f"<sheetData>{''.join(out)}</sheetData></worksheet>"
        )
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    book = "".join(
        f'<sheet name="{escape(n)}" sheetId="{i + 1}" r:id="rId{i + 1}"/>' for i, n in enumerate(sheets)
    )
    rels = "".join(
        f'<Relationship Id="rId{i + 1}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet{i + 1}.xml"/>'
        for i in range(len(sheets))
    )
    sst = "".join(f"<si><t>{escape(s)}</t></si>" for s in shared)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("xl/workbook.xml", f"<workbook {ns}><sheets>{book}</sheets></workbook>")
        z.writestr(
            "xl/_rels/workbook.xml.rels",
            f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{rels}</Relationships>',
        )
        z.writestr(
            "xl/sharedStrings.xml",
            f'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">{sst}</sst>',
        )
        for i, xml in enumerate(sheet_xml):
            z.writestr(f"xl/worksheets/sheet{i + 1}.xml", xml)


def by_name(ds):
    return {s.name: s for s in ds.samples}


def test_koniq_official_split_and_missing_images(tmp_path):
    rows = ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore,set"]
    for i, (mos, split) in enumerate(
        [(1.5, "training"), (4.25, "training"), (3.0, "validation"), (2.0, "test")]
    ):
        rows.append(f"{i}.jpg,0,0,0,0,0,0,{mos},0.5,{(mos - 1) * 25},{split}")
        if i != 1:
            png(tmp_path / "1024x768" / f"{i}.jpg")
    rows.append("9.jpg,0,0,0,0,0,0,5.0,0.5,100,training")  # labelled, absent
    (tmp_path / "koniq10k_distributions_sets.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(DatasetSpec("koniq", str(tmp_path)))
    assert {n: s.mos for n, s in by_name(ds).items()} == {"0.jpg": 1.5, "2.jpg": 3.0, "3.jpg": 2.0}
    assert ds.missing == 2 and ds.total_labels == 5 and "1.jpg" in ds.skipped_names
    assert "2 missing on disk" in ds.summary() and ds.mapping == "MOS 1-5 as is"
    train = load_dataset(DatasetSpec("koniq", str(tmp_path), split="train"))
    test = load_dataset(DatasetSpec("koniq", str(tmp_path), split="test"))
    assert [s.name for s in train.samples] == ["0.jpg"] and [s.name for s in test.samples] == ["3.jpg"]


def test_koniq_zscore_only(tmp_path):
    (tmp_path / "koniq10k_scores.csv").write_text("image_name,MOS_zscore\na.jpg,75\nb.jpg,0\n")
    png(tmp_path / "512x384" / "a.jpg")
    png(tmp_path / "512x384" / "b.jpg")
    ds = load_dataset(DatasetSpec("koniq", str(tmp_path)))
    assert {n: s.mos for n, s in by_name(ds).items()} == {"a.jpg": 4.0, "b.jpg": 1.0}


def test_spaq_xlsx(tmp_path):
    write_xlsx(
        tmp_path / "Annotations" / "MOS and Image attribute scores.xlsx",
        {
            "Sheet1": [
                ["Image name", "MOS", "Brightness"],
                ["00001.jpg", 50.0, 40],
                ["00002.jpg", 100, 60],
                ["00003.jpg", 0, 1],
            ]
        },
    )
    for n in ("00001.jpg", "00002.jpg", "00003.jpg"):
        png(tmp_path / "TestImage" / n)
    ds = load_dataset(DatasetSpec("spaq", str(tmp_path)))
    assert {n: s.mos for n, s in by_name(ds).items()} == {
        "00001.jpg": 3.0,
        "00002.jpg": 5.0,
        "00003.jpg": 1.0,
    }
    assert ds.mapping == "MOS 0-100 -> 1 + 4 MOS / 100"


def test_kadid_split_keeps_references_together(tmp_path):
    lines = ["dist_img,ref_img,dmos,var"]
    for ref in range(1, 21):
        for d in range(1, 4):
            name = f"I{ref:02d}_{d:02d}_01.png"
            lines.append(f"{name},I{ref:02d}.png,{1 + d},0.1")
            png(tmp_path / "images" / name)
    (tmp_path / "dmos.csv").write_text("\n".join(lines) + "\n")
    full = load_dataset(DatasetSpec("kadid", str(tmp_path)))
    assert (
        len(full) == 60
        and by_name(full)["I01_02_01.png"].mos == 3.0
        and by_name(full)["I01_02_01.png"].group == "I01.png"
    )
    train = load_dataset(DatasetSpec("kadid", str(tmp_path), split="train", test_fraction=0.3))
    test = load_dataset(DatasetSpec("kadid", str(tmp_path), split="test", test_fraction=0.3))
    assert len(train) + len(test) == 60 and 0 < len(test) < 60
    assert not {s.group for s in train.samples} & {s.group for s in test.samples}  # no scene on both sides
    again = load_dataset(DatasetSpec("kadid", str(tmp_path), split="test", test_fraction=0.3))
    assert [s.name for s in again.samples] == [s.name for s in test.samples]  # stable
    limited = load_dataset(DatasetSpec("kadid", str(tmp_path), limit=5))
    assert len(limited) == 5


def test_live_challenge_mat_files(tmp_path):
    from scipy.io import savemat

    names = [f"{i}.bmp" for i in range(1, 11)]
    mos = np.linspace(10, 90, 10)
    (tmp_path / "Data").mkdir()
    savemat(
        tmp_path / "Data" / "AllImages_release.mat",
        {"AllImages_release": np.array(names, dtype=object).reshape(-1, 1)},
    )
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos.reshape(1, -1)})
    for n in names:
        png(tmp_path / "Images" / n)
    ds = load_dataset(DatasetSpec("livec", str(tmp_path)))
    assert [s.name for s in ds.samples] == names[7:]  # the 7 training images are left out
    assert by_name(ds)["10.bmp"].mos == pytest.approx(1 + 4 * 0.9)


def test_pipal_elo_min_max(tmp_path):
    (tmp_path / "Train_Label").mkdir()
    (tmp_path / "Train_Label" / "A0001.txt").write_text("A0001_00_00.bmp,1000.0\nA0001_01_00.bmp,1500.0\n")
    (tmp_path / "Train_Label" / "A0002.txt").write_text("A0002_00_00.bmp,1800.0\n")
    for n in ("A0001_00_00.bmp", "A0001_01_00.bmp"):
        png(tmp_path / "Distortion_1" / n)
    png(tmp_path / "Distortion_2" / "A0002_00_00.bmp")
    ds = load_dataset(DatasetSpec("pipal", str(tmp_path)))
    assert {n: round(s.mos, 3) for n, s in by_name(ds).items()} == {
        "A0001_00_00.bmp": 1.0,
        "A0001_01_00.bmp": 3.5,
        "A0002_00_00.bmp": 5.0,
    }
    assert by_name(ds)["A0001_01_00.bmp"].group == "A0001" and "1000.0..1800.0" in ds.mapping


def test_agiqa3k_nested_images(tmp_path):
    (tmp_path / "data.csv").write_text(
        "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align\n"
        "AttnGAN_normal_000.jpg,a cat,,,,0.5,0.1,1,0.1\nmidjourney_lowstep_001.jpg,a dog,,,,5.0,0.1,1,0.1\n"
    )
    png(tmp_path / "AGIQA-3K" / "AttnGAN_normal_000.jpg")
    png(tmp_path / "AGIQA-3K" / "midjourney_lowstep_001.jpg")
    ds = load_dataset(DatasetSpec("agiqa3k", str(tmp_path)))
    assert {n: s.mos for n, s in by_name(ds).items()} == {
        "AttnGAN_normal_000.jpg": 1.4,
        "midjourney_lowstep_001.jpg": 5.0,
    }


def test_csiq_dmos_sheet_is_lower_is_better(tmp_path):
    write_xlsx(
        tmp_path / "csiq.DMOS.xlsx",
        {
            "note": [["read me"]],
            "all_by_image": [
                ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"],
                [1600, 1, "noise", 1, 0.01, 0.1],
                ["snow_leaves", 5, "jpeg 2000", 3, 0.02, 0.5],
                ["snow_leaves", 4, "f noise", 5, 0.02, 1.0],
            ],
        },
    )
    png(tmp_path / "dst_imgs" / "awgn" / "1600.AWGN.1.png")  # the release's upper-case tags
    png(tmp_path / "dst_imgs" / "jpeg2000" / "snow_leaves.jpeg2000.3.png")
    png(tmp_path / "dst_imgs" / "fnoise" / "snow_leaves.fnoise.5.png")
    ds = load_dataset(DatasetSpec("csiq", str(tmp_path)))
    assert {n: round(s.mos, 3) for n, s in by_name(ds).items()} == {
        "1600.awgn.1.png": 4.6,
        "snow_leaves.jpeg2000.3.png": 3.0,
        "snow_leaves.fnoise.5.png": 1.0,
    }
    assert ds.mapping == "DMOS 0-1 (lower is better) -> 5 - 4 dmos"
    assert read_xlsx_rows(tmp_path / "csiq.DMOS.xlsx")[0] == ["read me"]  # first sheet by default


def test_folder_layout_csv_json_regions_and_ranges(tmp_path):
    png(tmp_path / "imgs" / "a.png")
    png(tmp_path / "imgs" / "b.png")
    (tmp_path / "labels.csv").write_text(
        'image,mos,regions\na.png,80,"[{""bbox_2d"": [0, 0, 4, 4], ""distortion"": ""blur""}]"\nb.png,20,\nc.png,50,\n'
    )
    ds = load_dataset(DatasetSpec("folder", str(tmp_path), images="imgs", mos_range=[0, 100]))
    a, b = by_name(ds)["a.png"], by_name(ds)["b.png"]
    assert (a.mos, b.mos) == (pytest.approx(4.2), pytest.approx(1.8)) and ds.missing == 1
    assert a.regions == [{"bbox_2d": [0, 0, 4, 4], "distortion": "blur"}] and b.regions is None
    (tmp_path / "j").mkdir()
    png(tmp_path / "j" / "x.png")
    (tmp_path / "j" / "labels.json").write_text('[{"image": "x.png", "score": 2}]')
    lower = load_dataset(DatasetSpec("folder", str(tmp_path / "j"), mos_range=[10, 0]))  # lower is better
    assert lower.samples[0].mos == pytest.approx(1 + 4 * 0.8) and "lower is better" in lower.mapping


def test_corrupt_images_are_counted_and_errors_are_clear(tmp_path):
    png(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "labels.csv").write_text("image,mos\nok.png,3\nbad.png,4\n")
    ds = load_dataset(DatasetSpec("folder", str(tmp_path)))
    assert len(ds) == 2
    check_images(ds)
    assert [s.name for s in ds.samples] == ["ok.png"] and ds.corrupt == 1 and "1 unreadable" in ds.summary()
    with pytest.raises(ImageError):
        read_rgb(str(tmp_path / "bad.png"))
    big = tmp_path / "big.png"
    png(big, size=(400, 100))
    assert read_rgb(str(big), max_side=100).shape == (25, 100, 3)
    with pytest.raises(DatasetError, match="does not exist; set root"):
        load_dataset(DatasetSpec("kadid", str(tmp_path / "nowhere")))
    with pytest.raises(DatasetError, match=r"no kadid dmos.csv found \(looked for .*dmos.csv"):
        load_dataset(DatasetSpec("kadid", str(tmp_path)))
    with pytest.raises(DatasetError, match="AllImages_release.mat does not exist"):
        load_dataset(DatasetSpec("livec", str(tmp_path)))
    (tmp_path / "labels.csv").write_text("file,quality\nok.png,3\n")
    with pytest.raises(DatasetError, match="no column mos / score / MOS"):
        load_dataset(DatasetSpec("folder", str(tmp_path)))
    (tmp_path / "labels.csv").write_text("image,mos\nnope.png,3\n")
    with pytest.raises(DatasetError, match="none of the 1 labelled images were found"):
        load_dataset(DatasetSpec("folder", str(tmp_path)))
