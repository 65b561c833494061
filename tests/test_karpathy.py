"""Karpathy-split readers: what is read (checked against the JSON by hand), the protocol, and every clear error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_fixtures import write_tiny_karpathy
from PIL import Image

from workbench.data.karpathy import clean_caption, load_karpathy


@pytest.fixture(scope="module")
def flickr(tmp_path_factory) -> tuple[Path, Path]:
    json_path = write_tiny_karpathy(tmp_path_factory.mktemp("flickr"), n_images=20, dataset="flickr30k")
    return json_path, json_path.parent / "images"


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    json_path = write_tiny_karpathy(tmp_path_factory.mktemp("coco"), n_images=20, dataset="coco", seed=1)
    return json_path, json_path.parent / "images"


def _records(json_path: Path, split: str | set[str]) -> list[dict]:
    wanted = {split} if isinstance(split, str) else split
    return [r for r in json.loads(json_path.read_text())["images"] if r["split"] in wanted]


def _copy(src: tuple[Path, Path], folder: Path, edit=None) -> Path:
    """A copy of the JSON (optionally edited) in ``folder``, pointing at the same images."""
    data = json.loads(src[0].read_text())
    if edit is not None:
        edit(data)
    path = folder / src[0].name
    path.write_text(json.dumps(data))
    return path


# --- what is read -----------------------------------------------------------------------------------------------


def test_clean_caption_by_hand() -> None:
    assert clean_caption("A dog (brown) runs.") == "a dog brown runs"
    assert clean_caption('  Two "cats";  one~dog!\n') == "two cats one dog"
    assert clean_caption("A cat's toy, on a mat") == "a cat's toy, on a mat"  # only .!"()*#:;~ are removed


def test_flickr_test_split_matches_the_json(flickr) -> None:
    json_path, root = flickr
    split = load_karpathy(json_path, root, "test", dataset="flickr30k")
    records = _records(json_path, "test")
    assert split.name == "test" and split.dataset == "flickr30k" and split.captions_per_image == 5
    assert split.num_images == len(records) == 4 and split.num_captions == 20
    assert split.image_ids.tolist() == [r["imgid"] for r in records]
    assert split.image_paths == [root / r["filename"] for r in records]
    # the first 5 captions of each image, in file order (some images have a 6th, which is dropped)
    assert any(len(r["sentences"]) == 6 for r in records)
    assert split.caption_ids.tolist() == [s["sentid"] for r in records for s in r["sentences"][:5]]
    assert split.texts == [clean_caption(s["raw"]) for r in records for s in r["sentences"][:5]]
    assert split.caption_image.tolist() == [i for i in range(4) for _ in range(5)]
    assert split.caption_image.dtype == split.image_ids.dtype == split.caption_ids.dtype == torch.long


def test_relation_is_the_coco_protocol(flickr) -> None:
    split = load_karpathy(*flickr, "test")
    relations = split.relations()
    assert list(relations) == ["coco"]
    expected = torch.zeros(4, 20, dtype=torch.bool)
    for i in range(4):
        expected[i, 5 * i : 5 * i + 5] = True
    assert torch.equal(relations["coco"].dense(), expected)


def test_load_images_are_rgb_in_the_order_asked(flickr) -> None:
    json_path, root = flickr
    split = load_karpathy(json_path, root, "val")
    images = split.load_images(torch.tensor([2, 0, 2]))
    assert [im.mode for im in images] == ["RGB"] * 3 and images[0].size == (48, 40)
    pixels = [np.asarray(im) for im in images]
    with Image.open(split.image_paths[2]) as raw:
        assert np.array_equal(pixels[0], np.asarray(raw.convert("RGB"))) and np.array_equal(pixels[2], pixels[0])
    with Image.open(split.image_paths[0]) as raw:
        assert np.array_equal(pixels[1], np.asarray(raw.convert("RGB")))
    assert not np.array_equal(pixels[0], pixels[1])
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        split.load_images([4])


def test_splits_partition_the_file_and_raw_captions(flickr) -> None:
    json_path, root = flickr
    splits = {name: load_karpathy(json_path, root, name) for name in ("train", "val", "test")}
    ids = torch.cat([s.image_ids for s in splits.values()]).tolist()
    assert sorted(ids) == list(range(20))
    assert [s.num_images for s in splits.values()] == [12, 4, 4]
    raw = load_karpathy(json_path, root, "train", clean=False)
    assert raw.texts[0] == _records(json_path, "train")[0]["sentences"][0]["raw"]
    assert raw.texts[0] != splits["train"].texts[0]


def test_global_ids_map_back_to_split_indices(coco) -> None:
    split = load_karpathy(*coco, "train", dataset="coco", restval_as_train=True)
    assert (split.caption_ids.diff() > 1).any()  # dropped 6th captions: ids are not contiguous
    perm = torch.randperm(split.num_captions, generator=torch.Generator().manual_seed(0))
    assert torch.equal(split.caption_index(split.caption_ids[perm]), perm)
    assert torch.equal(split.image_index(split.image_ids.flip(0)), torch.arange(split.num_images).flip(0))
    test_ids = load_karpathy(*coco, "test", dataset="coco").image_ids
    with pytest.raises(KeyError, match=f"image_ids holds 1 id.*not in split 'train', e.g. {int(test_ids[0])}"):
        split.image_index(torch.cat([split.image_ids[:2], test_ids[:1]]))


def test_max_images_keeps_the_first_images(flickr) -> None:
    full = load_karpathy(*flickr, "train")
    part = load_karpathy(*flickr, "train", max_images=3)
    assert part.image_ids.tolist() == full.image_ids[:3].tolist()
    assert part.texts == full.texts[:15] and part.caption_ids.tolist() == full.caption_ids[:15].tolist()


def test_coco_filepath_and_restval(coco) -> None:
    json_path, root = coco
    test = load_karpathy(json_path, root, "test", dataset="coco")
    assert all(p.parent == root / "val2014" and p.is_file() for p in test.image_paths)
    train = load_karpathy(json_path, root, "train", dataset="coco")
    restval = load_karpathy(json_path, root, "restval", dataset="coco")
    both = load_karpathy(json_path, root, "train", dataset="coco", restval_as_train=True)
    assert train.num_images == len(_records(json_path, "train")) and restval.num_images == 4
    assert both.num_images == train.num_images + restval.num_images
    # file order is kept: restval images come first in the generated file
    assert both.image_ids.tolist() == [r["imgid"] for r in _records(json_path, {"train", "restval"})]
    assert both.name == "train"


def test_folder_is_accepted_as_json_path(coco) -> None:
    json_path, root = coco
    assert load_karpathy(json_path.parent, root, "val", dataset="coco").num_images == 4


# --- errors -----------------------------------------------------------------------------------------------------


def test_missing_json_names_the_path(tmp_path, flickr) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.json")):
        load_karpathy(tmp_path / "nope.json", flickr[1])
    with pytest.raises(FileNotFoundError, match="dataset_flickr30k.json"):
        load_karpathy(tmp_path, flickr[1])


def test_malformed_json(tmp_path, flickr) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_karpathy(bad, flickr[1])
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="'images' list"):
        load_karpathy(bad, flickr[1])
    no_sentid = _copy(flickr, tmp_path, lambda d: d["images"][3]["sentences"][1].pop("sentid"))
    with pytest.raises(ValueError, match=r"images\[3\]\.sentences\[1\].*'sentid'"):
        load_karpathy(no_sentid, flickr[1])
    no_name = _copy(flickr, tmp_path, lambda d: d["images"][2].pop("filename"))
    with pytest.raises(ValueError, match=r"images\[2\] needs 'filename'"):
        load_karpathy(no_name, flickr[1])


def test_duplicate_imgid(tmp_path, flickr) -> None:
    dup = _copy(flickr, tmp_path, lambda d: d["images"][1].update(imgid=0))
    with pytest.raises(ValueError, match="repeats imgid"):
        load_karpathy(dup, flickr[1])


def test_unknown_split_lists_valid_and_present_splits(flickr) -> None:
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test', 'restval'\], got 'testing'"):
        load_karpathy(*flickr, "testing")
    present = r"split 'restval' has no images.*present in the file: \['test', 'train', 'val'\]"
    with pytest.raises(ValueError, match=present):
        load_karpathy(*flickr, "restval")


def test_unknown_or_mismatched_dataset(coco) -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_karpathy(*coco, dataset="mscoco30k")
    with pytest.raises(ValueError, match="dataset='flickr30k' was given but .* declares dataset 'coco'"):
        load_karpathy(coco[0], coco[1], dataset="flickr30k")


def test_missing_image_root(flickr, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="image_root.*" + str(tmp_path / "no-images")):
        load_karpathy(flickr[0], tmp_path / "no-images")


def test_missing_image_names_path_and_imgid(tmp_path) -> None:
    json_path = write_tiny_karpathy(tmp_path, n_images=10)
    victim = tmp_path / "images" / "1009.jpg"  # imgid 9, a test image
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 image file\(s\).*1009\.jpg \(imgid 9\)"):
        load_karpathy(json_path, tmp_path / "images", "test")
    split = load_karpathy(json_path, tmp_path / "images", "test", check_images=False)
    assert split.load_images([0])[0].mode == "RGB"
    with pytest.raises(FileNotFoundError, match=r"1009\.jpg \(imgid 9\)"):
        split.load_images([1])


def test_unreadable_image(tmp_path) -> None:
    json_path = write_tiny_karpathy(tmp_path, n_images=10)
    (tmp_path / "images" / "1008.jpg").write_bytes(b"not an image")
    split = load_karpathy(json_path, tmp_path / "images", "test")
    with pytest.raises(ValueError, match=r"cannot read image .*1008\.jpg \(imgid 8\)"):
        split.load_images([0])


def test_too_few_captions_raise_or_skip(tmp_path, flickr) -> None:
    short = _copy(flickr, tmp_path, lambda d: d["images"][17]["sentences"].pop())  # a test image with 5
    with pytest.raises(ValueError, match=r"fewer than captions_per_image=5.*imgid 17.*has 4"):
        load_karpathy(short, flickr[1], "test")
    with pytest.warns(UserWarning, match="skipping them"):
        split = load_karpathy(short, flickr[1], "test", skip_short=True)
    assert 17 not in split.image_ids.tolist() and split.num_images == 3 and split.num_captions == 15
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_karpathy(short, flickr[1], "test", captions_per_image=4).num_captions == 16


def test_bad_arguments(flickr) -> None:
    with pytest.raises(ValueError, match="captions_per_image must be >= 1"):
        load_karpathy(*flickr, captions_per_image=0)
    with pytest.raises(TypeError, match="max_images must be an int"):
        load_karpathy(*flickr, max_images=2.5)


@pytest.mark.parametrize("filename, filepath", [("../outside.jpg", None), ("/etc/passwd", None),
                                                ("x.jpg", "../.."), ("x.jpg", "/abs")])
def test_image_paths_must_stay_inside_the_image_root(tmp_path, flickr, filename, filepath) -> None:
    def edit(data: dict) -> None:
        data["images"][3]["filename"] = filename
        if filepath is not None:
            data["images"][3]["filepath"] = filepath

    with pytest.raises(ValueError, match=r"images\[3\] \(imgid 3\) names the image file .* not a relative path "
                                         "inside image_root"):
        load_karpathy(_copy(flickr, tmp_path, edit), flickr[1], "test")  # any record: the whole file is checked


def test_check_images_reads_every_header_or_decodes_every_image(tmp_path) -> None:
    json_path = write_tiny_karpathy(tmp_path, n_images=10)
    split = load_karpathy(json_path, tmp_path / "images", "test")
    assert split.check_images() == 2 == split.check_images(decode=True)
    victim = tmp_path / "images" / "1009.jpg"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: its header still parses
    assert split.check_images() == 2
    with pytest.raises(ValueError, match=r"1 of 2 image\(s\) of split 'test' cannot be read, e\.g\. .*1009\.jpg "
                                         r"\(imgid 9\)"):
        split.check_images(decode=True)
    (tmp_path / "images" / "1008.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"1 of 2 .*1008\.jpg \(imgid 8\)"):
        split.check_images()
