"""Data sources, manifests and image decoding (every mode ends as RGB on white)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.extraction.sources import from_csv, from_folder, load_manifest
from featcache.errors import DataError, ImageDecodeError, UnknownNameError
from featcache.extraction.images import decode_image

from conftest import make_image


def test_folder_classes_nested_and_ignored_files(image_folder):
    m = from_folder(image_folder)
    assert m.class_names == ["cat", "dog"] and len(m) == 12
    assert "cat/nested/img_5.png" in m.ids and m.ignored == ["cat/notes.txt"]
    assert m.labels.tolist() == [0] * 6 + [1] * 6 and set(m.split) == {""}


def test_folder_with_split_folders(tmp_path):
    for split in ("train", "valid", "test"):
        for cls in ("a", "b"):
            make_image(tmp_path / split / cls / "x.png", seed=hash((split, cls)) % 1000)
    m = from_folder(tmp_path)
    assert sorted(set(m.split)) == ["test", "train", "val"] and m.class_names == ["a", "b"]


def test_unlabelled_folder(tmp_path):
    for i in range(3):
        make_image(tmp_path / f"{i}.jpg", seed=i, fmt="JPEG")
    m = from_folder(tmp_path)
    assert m.class_names == [] and (m.labels == -1).all()


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        from_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"no images found .*1 other files"):
        from_folder(tmp_path / "empty")


def test_symlink_loops_are_not_followed_forever(tmp_path):
    make_image(tmp_path / "cls" / "a.png", seed=1)
    (tmp_path / "cls" / "loop").symlink_to(tmp_path / "cls", target_is_directory=True)
    assert from_folder(tmp_path).ids == ["cls/a.png"]


def write_vehicle_csv(tmp_path):
    img = tmp_path / "images"
    rows = ["image_names,emergency_or_no"]
    for i in range(6):
        make_image(img / f"{i}.jpg", seed=i, fmt="JPEG")
        rows.append(f"{i}.jpg,{i % 2}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "train.csv", img


def test_csv_like_the_vehicle_tutorial(tmp_path):
    csv_path, img = write_vehicle_csv(tmp_path)
    m = from_csv(csv_path, path_column="image_names", label_column="emergency_or_no", root=img)
    assert m.class_names == ["0", "1"] and m.labels.tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(DataError, match="--root"):
        from_csv(csv_path, path_column="image_names", label_column="emergency_or_no")
    with pytest.raises(UnknownNameError, match="did you mean 'image_names'"):
        from_csv(csv_path, path_column="image_name", label_column="emergency_or_no", root=img)


def test_csv_duplicate_rows(tmp_path):
    make_image(tmp_path / "a.png", seed=1)
    (tmp_path / "d.csv").write_text("path,label\na.png,x\na.png,x\n")
    with pytest.raises(DataError, match=r"line 3: path .a\.png. appears twice \(first on line 2\)"):
        from_csv(tmp_path / "d.csv")


def test_builtin_digits_written_once(cache_dir):
    m = load_manifest("builtin:digits", cache_dir=cache_dir)
    assert len(m) == 1797 and m.class_names == [str(i) for i in range(10)]
    assert Image.open(m.paths[0]).size == (8, 8)
    with pytest.raises(UnknownNameError, match="builtin:digits"):
        load_manifest("builtin:digit", cache_dir=cache_dir)


# ----------------------------------------------------------------- decoding


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.save(tmp_path / "t.png")
    assert np.asarray(decode_image(str(tmp_path / "t.png"))).tolist() == [[[255, 255, 255]] * 4] * 4
    la = Image.new("LA", (2, 2), (0, 128))
    la.save(tmp_path / "la.png")
    px = np.asarray(decode_image(str(tmp_path / "la.png")))[0, 0]
    assert 126 <= px[0] <= 128 and px[0] == px[1] == px[2]
    p = Image.new("P", (2, 2), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(decode_image(str(tmp_path / "p.png"))).min() == 255


def test_sixteen_bit_cmyk_gray_and_exif(tmp_path):
    a16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    out = np.asarray(decode_image(str(tmp_path / "g16.png")))
    assert out.shape == (4, 4, 3) and out.max() == 255 and out.min() == 0
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = np.asarray(decode_image(str(tmp_path / "c.jpg")))[1, 1]
    assert r > 200 and g < 60 and b < 60
    img = Image.new("RGB", (6, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    img.save(tmp_path / "r.jpg", exif=exif)
    assert decode_image(str(tmp_path / "r.jpg")).size == (2, 6)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, g, _ = np.asarray(decode_image(str(tmp_path / "a.gif")))[0, 0]
    assert r > 200 and g < 50


def test_bad_images_fail_or_skip_by_policy(image_folder, cache_dir):
    (image_folder / "dog" / "empty.png").write_bytes(b"")
    good = (image_folder / "dog" / "img_0.png").read_bytes()
    (image_folder / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (image_folder / "dog" / "fake.jpg").write_text("hello")
    kw = dict(backbone="resnet18", weights="none", image_size=32, cache_dir=cache_dir, workers=0)
    with pytest.raises(ImageDecodeError, match=r"--on-error skip"):
        featcache.extract(str(image_folder), **kw)
    r = featcache.extract(str(image_folder), on_error="skip", **kw)
    assert r.rows == 12 and sorted(s["id"] for s in r.skipped) == ["dog/empty.png", "dog/fake.jpg",
                                                                   "dog/truncated.png"]
    f = featcache.load_features(r.view)
    import json

    assert len(json.loads(f.attrs["skipped"])) == 3
    again = featcache.extract(str(image_folder), on_error="skip", **kw)
    assert again.cache_hit and len(again.skipped) == 3


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    from featcache.extraction.images import ImageTooLarge

    Image.new("L", (4000, 3000)).save(tmp_path / "big.png")  # 12 MP: cheap to write, over a 10 MP cap
    with pytest.raises(ImageTooLarge, match="megapixel limit"):
        decode_image(str(tmp_path / "big.png"), max_pixels=10_000_000)
    assert decode_image(str(tmp_path / "big.png"), max_pixels=20_000_000).size == (4000, 3000)


def test_pillow_bomb_limit_applies_by_default(tmp_path, monkeypatch):
    from featcache.extraction.images import ImageTooLarge

    Image.new("L", (300, 300)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageTooLarge):
        decode_image(str(tmp_path / "b.png"))


def test_csv_labels_of_mixed_types(tmp_path):
    for i in range(3):
        make_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "m.csv").write_text("path,label\n0.png,1\n1.png,cat\n2.png,0\n")
    with pytest.raises(DataError, match=r"mixes numbers \(e.g. '1'\) and text \(e.g. 'cat'\)"):
        from_csv(tmp_path / "m.csv")


def test_non_utf8_file_names(tmp_path, cache_dir):
    import os

    make_image(tmp_path / "a" / "ok.png", seed=1)
    make_image(Path(os.fsdecode(str(tmp_path / "b").encode() + b"/caf\xe9.png")), seed=2)
    r = featcache.extract(str(tmp_path), backbone="resnet18", weights="none", image_size=32,
                          cache_dir=cache_dir, workers=0)
    assert featcache.load_features(r.view).ids == ["a/ok.png", "b/caf\\xe9.png"]
    assert featcache.extract(str(tmp_path), backbone="resnet18", weights="none", image_size=32,
                             cache_dir=cache_dir, workers=0).cache_hit


def test_symlinked_files_and_folders_are_followed(tmp_path):
    make_image(tmp_path / "src" / "x.png", seed=3)
    (tmp_path / "data" / "c1").mkdir(parents=True)
    (tmp_path / "data" / "c1" / "link.png").symlink_to(tmp_path / "src" / "x.png")
    (tmp_path / "data" / "c2").symlink_to(tmp_path / "src", target_is_directory=True)
    m = from_folder(tmp_path / "data")
    assert m.ids == ["c1/link.png", "c2/x.png"] and m.class_names == ["c1", "c2"]


# ----------------------------------------------------------------- bad input: folders


def test_symlink_back_to_the_data_root_is_not_a_class(tmp_path):
    make_image(tmp_path / "cls" / "a.png", seed=1)
    make_image(tmp_path / "cls2" / "b.png", seed=2)
    (tmp_path / "toploop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "cls" / "up").symlink_to(tmp_path, target_is_directory=True)
    m = from_folder(tmp_path)
    assert m.class_names == ["cls", "cls2"] and m.ids == ["cls/a.png", "cls2/b.png"]


def test_symlink_back_to_the_root_keeps_split_folders(tmp_path):
    for split in ("train", "test"):
        make_image(tmp_path / split / "a" / "x.png", seed=hash(split) % 100)
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "train" / "a" / "back").symlink_to(tmp_path / "train", target_is_directory=True)
    m = from_folder(tmp_path)
    assert m.ids == ["test/a/x.png", "train/a/x.png"] and m.split == ["test", "train"] and m.class_names == ["a"]


def test_one_folder_in_two_classes_is_an_error(tmp_path):
    make_image(tmp_path / "cat" / "a.png", seed=1)
    (tmp_path / "dog").symlink_to(tmp_path / "cat", target_is_directory=True)
    with pytest.raises(DataError, match=r"'dog' is the same folder as 'cat' .*class 'cat' and to class 'dog'; "
                                        r"remove one of the two links"):
        from_folder(tmp_path)


def test_broken_symlinks_are_named_with_their_target(tmp_path):
    make_image(tmp_path / "cls" / "a.png", seed=1)
    (tmp_path / "cls" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "lost_class").symlink_to(tmp_path / "moved_away")
    (tmp_path / "cls" / "old.txt").symlink_to(tmp_path / "nowhere.txt")  # not an image: ignored, as before
    with pytest.raises(DataError) as e:
        from_folder(tmp_path)
    msg = str(e.value)
    assert msg.startswith("2 broken symlinks in ") and "permissions" not in msg
    assert f"'cls/gone.png' -> '{tmp_path / 'nowhere.png'}'" in msg
    assert f"'lost_class' -> '{tmp_path / 'moved_away'}'" in msg and msg.endswith("fix the links or delete them")


# ----------------------------------------------------------------- bad input: CSV files


def two_images(tmp_path):
    for i in range(2):
        make_image(tmp_path / f"{i}.png", seed=i)


def test_csv_not_utf8(tmp_path):
    two_images(tmp_path)
    (tmp_path / "l.csv").write_bytes("path,label\n0.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"'.*l\.csv' is not UTF-8: byte 0xe9 at offset 20 \(line 2\).*save the "
                                        r"file as UTF-8"):
        from_csv(tmp_path / "l.csv")
    (tmp_path / "w.csv").write_bytes("path,label\n0.png,x\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"is UTF-16 text; expected UTF-8"):
        from_csv(tmp_path / "w.csv")


def test_csv_bom_crlf_and_blank_lines(tmp_path):
    two_images(tmp_path)
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbf path , label\r\n0.png,caf\xc3\xa9\r\n\r\n,\r\n1.png,x\r\n")
    m = from_csv(tmp_path / "b.csv")
    assert m.ids == ["0.png", "1.png"] and m.class_names == ["caf\u00e9", "x"]


def test_csv_unknown_split_values(tmp_path):
    two_images(tmp_path)
    (tmp_path / "s.csv").write_text("path,label,split\n0.png,a,train\n\n1.png,b,tset\n")
    with pytest.raises(DataError, match=r"s\.csv line 4: 'tset' in column 'split' is not a split; did you mean "
                                        r"'test'\? expected one of train, .*testing, or blank for no split"):
        from_csv(tmp_path / "s.csv", split_column="split")
    (tmp_path / "s.csv").write_text("path,label,split\n0.png,a,Holdout\n1.png,b,\n")
    with pytest.raises(DataError, match=r"line 2: 'Holdout' in column 'split' is not a split; expected one of"):
        from_csv(tmp_path / "s.csv", split_column="split")
    (tmp_path / "s.csv").write_text("path,label,split\n0.png,a,VALID\n1.png,b,\n")
    assert from_csv(tmp_path / "s.csv", split_column="split").split == ["val", ""]


def test_csv_rows_with_missing_or_extra_fields(tmp_path):
    two_images(tmp_path)
    (tmp_path / "f.csv").write_text("path,label\n0.png,a\n1.png\n")
    with pytest.raises(DataError, match=r"f\.csv line 3: 1 field but the header has 2 \(path,label\); expected one "
                                        r"value per column"):
        from_csv(tmp_path / "f.csv")
    (tmp_path / "f.csv").write_text("path,label\n0.png,a,b\n1.png,a\n")
    with pytest.raises(DataError, match=r"line 2: 3 fields but the header has 2 .*quote values that contain commas"):
        from_csv(tmp_path / "f.csv")
    (tmp_path / "f.csv").write_text('path,label\n0.png,"a,b"\n1.png,\n')  # quoted comma; blank = unlabelled
    assert from_csv(tmp_path / "f.csv").labels.tolist() == [0, -1]


def test_csv_empty_path_cell(tmp_path):
    two_images(tmp_path)
    (tmp_path / "p.csv").write_text("path,label\n0.png,a\n ,b\n")
    with pytest.raises(DataError, match=r"p\.csv line 3: column 'path' is empty; expected an image path"):
        from_csv(tmp_path / "p.csv")


def test_empty_csv(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"'.*e\.csv' is empty; expected a header line naming the columns "
                                        r"\(e\.g\. path,label\) and then one line per image"):
        from_csv(tmp_path / "e.csv")
    (tmp_path / "e.csv").write_text("\n\n")
    with pytest.raises(DataError, match=r"is empty"):
        from_csv(tmp_path / "e.csv")
    (tmp_path / "e.csv").write_text("path,label\n")
    with pytest.raises(DataError, match=r"has a header \(path,label\) but no rows"):
        from_csv(tmp_path / "e.csv")


def test_csv_with_some_files_missing_names_them(tmp_path):
    for i in range(4):
        make_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "m.csv").write_text("path,label\n0.png,a\n1.png,a\nx.png,b\n3.png,b\n2.png,b\n")
    with pytest.raises(DataError) as e:
        from_csv(tmp_path / "m.csv")
    assert "1 of 5 files listed in m.csv are missing under" in str(e.value)
    assert "line 4 'x.png'; fix those paths or remove their rows" in str(e.value) and "--root" not in str(e.value)
    (tmp_path / "m.csv").write_text("path,label\nsub/0.png,a\nsub/1.png,b\n")
    with pytest.raises(DataError, match=r"2 of 2 files .* \(first: line 2 'sub/0.png'\); set --root"):
        from_csv(tmp_path / "m.csv")
