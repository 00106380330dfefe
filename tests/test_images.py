"""mblip/images.py, the one way to open an image: EXIF orientation applied the same way in training, evaluation and
prediction; the decompression-bomb limit as a counted error; 16-bit images open; every kind of source."""

import io
import json
import logging
import subprocess
import sys
import warnings

import datasets
import numpy
import pytest
import torch
from conftest import build
from PIL import Image

from mblip import images, predict
from mblip.evaluation.run import main as eval_main
from mblip.images import ImageDecodeError, check_image, open_image
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.training import DataArguments, MBlipCollator, drop_bad_rows


ORIENTATION = 0x0112  # the EXIF tag


@pytest.fixture
def pixel_limit():
    """set_max_image_pixels for one test; ours and PIL's globals are restored afterwards."""
    ours, pils = images.max_image_pixels(), Image.MAX_IMAGE_PIXELS
    yield images.set_max_image_pixels
    images.set_max_image_pixels(ours)
    Image.MAX_IMAGE_PIXELS = pils


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, processor = build("mt5")
    path = tmp_path_factory.mktemp("tiny-mt5")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A phone photo (JPEG whose pixels are stored sideways, with EXIF orientation 6) and the same picture stored
    upright losslessly: what a viewer shows for the phone photo."""
    root = tmp_path_factory.mktemp("photos")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (40, 56, 3), generator=generator, dtype=torch.uint8)
    pixels[:, :20] = torch.tensor([250, 20, 20], dtype=torch.uint8)  # a red band: left in the upright picture
    upright = Image.fromarray(pixels.numpy())
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(root / "phone.jpg", quality=95, exif=exif)
    with Image.open(root / "phone.jpg") as stored:
        assert stored.getexif()[ORIENTATION] == 6 and stored.size == (40, 56)
        # The decoded JPEG turned upright by hand, stored losslessly: the exact pixels the phone photo must give.
        stored.transpose(Image.Transpose.ROTATE_270).save(root / "upright.png")
    return root


class Recorder:
    """Records the pixel_values every generate call receives (and then generates as usual)."""

    def __init__(self, monkeypatch):
        self.pixel_values = []
        original = MBlipForConditionalGeneration.generate

        def recording(model, *args, **kwargs):
            self.pixel_values.append(kwargs["pixel_values"].detach().cpu().float())
            return original(model, *args, **kwargs)

        monkeypatch.setattr(MBlipForConditionalGeneration, "generate", recording)


# ---------------------------------------------------------------------------------------------------- orientation
def test_exif_orientation_is_applied_alike_in_training_evaluation_and_prediction(
    photos, model_dir, tmp_path, monkeypatch
):
    from mblip.processing_mblip import MBlipProcessor

    processor = MBlipProcessor.from_pretrained(model_dir)
    names = ["phone.jpg", "upright.png"]

    # Training: the collator.
    collator = MBlipCollator(processor, DataArguments(train_file="x.jsonl", image_root=str(photos)))
    trained = collator([{"image_id": name, "context": "Caption", "label": "x"} for name in names])["pixel_values"]

    # Evaluation: `python -m eval` on an XM3600-format file naming the two images.
    recorder = Recorder(monkeypatch)
    rows = [{"image/key": name.split(".")[0], "de": {"caption": ["ein Bild"]}} for name in names]
    (tmp_path / "xm3600").mkdir()
    (tmp_path / "xm3600" / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    eval_images = tmp_path / "xm3600" / "images"
    eval_images.mkdir()
    for name in names:  # XM3600 names its images <key>.jpg, whatever their format
        (eval_images / (name.split(".")[0] + ".jpg")).write_bytes((photos / name).read_bytes())
    argv = ["--model", str(model_dir), "--task", "xm3600", "--languages", "de", "--data_dir", str(tmp_path / "xm3600")]
    argv += ["--image_dir", str(eval_images), "--output_dir", str(tmp_path / "eval"), "--num_beams", "1"]
    eval_main(argv + ["--max_new_tokens", "2", "--batch_size", "2"])
    (evaluated,) = recorder.pixel_values

    # Prediction: predict.py on the two files.
    recorder.pixel_values.clear()
    args = predict.PredictArguments(
        model=str(model_dir), images=[str(photos / n) for n in names], batch_size=2, num_beams=1, max_new_tokens=2
    )
    predict.predict(args)
    (predicted,) = recorder.pixel_values

    for pixel_values in (trained, evaluated, predicted):
        assert torch.equal(pixel_values[0], pixel_values[1])  # the phone photo is seen upright
    assert torch.equal(trained, evaluated) and torch.equal(trained, predicted)
    # ... and the test can fail: ignoring the EXIF orientation gives other pixels.
    with Image.open(photos / "phone.jpg") as sideways:
        ignored = processor.image_processor(sideways.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert not torch.allclose(ignored, trained[1], atol=0.1)


def test_every_kind_of_source_gives_the_same_upright_image(photos):
    path = photos / "phone.jpg"
    data = path.read_bytes()
    reference = open_image(path)
    assert reference.size == (56, 40) and ORIENTATION not in reference.getexif()
    with Image.open(path) as lazily_opened:
        sources = [str(path), data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, lazily_opened]
        for source in sources:
            image = open_image(source)
            assert image.size == reference.size and image.tobytes() == reference.tobytes(), type(source)
    image = open_image(path)
    assert getattr(image, "fp", None) is None  # decoded and detached from the file


# ---------------------------------------------------------------------------------------------------- errors
def test_missing_corrupt_and_truncated_images_are_one_error_naming_the_source(tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    png = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(png, "PNG")
    (tmp_path / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    cases = {"missing.png": "missing", "corrupt.jpg": "unreadable", "truncated.png": "unreadable"}
    for name, kind in cases.items():
        with pytest.raises(ImageDecodeError) as caught:
            open_image(tmp_path / name)
        assert caught.value.kind == kind and caught.value.source == str(tmp_path / name)
        assert name in str(caught.value) and caught.value.reason in str(caught.value)
    with pytest.raises(ImageDecodeError, match="<7 bytes>"):
        open_image(b"garbage")
    with pytest.raises(ImageDecodeError, match="neither bytes nor a path"):
        open_image({"bytes": None, "path": None})
    # The cheap check: the missing and corrupt files fail; the truncated one is only caught by decoding.
    for name in ("missing.png", "corrupt.jpg"):
        with pytest.raises(ImageDecodeError):
            check_image(tmp_path / name)


def test_over_the_pixel_limit_is_an_error_naming_the_count_and_the_limit(tmp_path, pixel_limit):
    Image.new("RGB", (50, 30), (1, 2, 3)).save(tmp_path / "big.png")  # 1,500 pixels
    pixel_limit(1000)
    for check in (open_image, check_image):
        with pytest.raises(ImageDecodeError, match=r"50x30 = 1,500 pixels, over the limit of 1,000 pixels") as caught:
            check(tmp_path / "big.png")
        assert caught.value.kind == "too_large"
    pixel_limit(1500)
    assert open_image(tmp_path / "big.png").size == (50, 30)

    # PIL alone only warns between its limit and twice that; here it is an error, and no warning leaks out.
    Image.MAX_IMAGE_PIXELS = 1000
    pixel_limit(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageDecodeError, match="1,500 pixels"):
            open_image(tmp_path / "big.png")
    # Above twice PIL's limit PIL refuses while reading the header; that is the same error.
    Image.MAX_IMAGE_PIXELS = 500
    with pytest.raises(ImageDecodeError, match="1,500 pixels") as caught:
        open_image(tmp_path / "big.png")
    assert caught.value.kind == "too_large"
    # A limit above PIL's raises PIL's, so that PIL does not refuse first.
    pixel_limit(2000)
    assert Image.MAX_IMAGE_PIXELS == 2000 and open_image(tmp_path / "big.png").size == (50, 30)


def test_the_pixel_limit_comes_from_the_environment():
    code = "from mblip.images import max_image_pixels; print(max_image_pixels())"
    for value, expected in (("1234", "1234"), ("none", "None"), ("", str(images.DEFAULT_MAX_IMAGE_PIXELS))):
        env = {**__import__("os").environ, "MBLIP_MAX_IMAGE_PIXELS": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_an_image_over_the_limit_is_a_counted_skip_in_trainings_data_check(tmp_path, pixel_limit, caplog):
    for i in range(5):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / f"small{i}.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    rows = [{"image_id": f"small{i}.png", "context": "c", "label": "t"} for i in range(5)]
    rows.insert(2, {"image_id": "huge.png", "context": "c", "label": "t"})
    pixel_limit(40 * 40)
    args = DataArguments(train_file="x.jsonl", image_root=str(tmp_path), max_bad_rows=0.5)
    with caplog.at_level(logging.WARNING):
        kept, report = drop_bad_rows(datasets.Dataset.from_list(rows), args, "train")
    assert len(kept) == 5 and "huge.png" not in kept["image_id"]
    assert report["bad_rows"] == 1 and report["by_reason"] == {"image over the pixel limit": 1}
    (example,) = report["examples"]
    assert example["row"] == 2 and example["reason"] == "image over the pixel limit"
    assert example["column"] == "image_id" and example["image"].endswith("huge.png'")  # the file is named
    assert "huge.png" in caplog.text
    # More of them than --max_bad_rows allows fails the run.
    with pytest.raises(ValueError, match="image over the pixel limit"):
        drop_bad_rows(
            datasets.Dataset.from_list(rows),
            DataArguments(train_file="x.jsonl", image_root=str(tmp_path), max_bad_rows=0.1),
            "train",
        )


# ---------------------------------------------------------------------------------------------------- 16-bit images
def sixteen_bit(tmp_path):
    """A 16-bit big-endian gradient as TIFF (opens as I;16B) and PNG (opens as I;16), with and without EXIF."""
    values = (torch.arange(40 * 56, dtype=torch.int32).reshape(40, 56) * 29 % 65536).numpy().astype(">u2")
    image = Image.frombytes("I;16B", (56, 40), values.tobytes())
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    paths = []
    for suffix in ("tiff", "png"):
        for tag in (None, exif):
            path = tmp_path / f"sixteen-{'exif' if tag else 'plain'}.{suffix}"
            image.save(path, **({"exif": tag} if tag else {}))
            paths.append(path)
    return paths


def test_16_bit_big_endian_images_open_and_reach_the_model(tmp_path, model_dir):
    paths = sixteen_bit(tmp_path)
    for path in paths:
        image = open_image(path)
        assert image.mode in ("I;16B", "I;16") and numpy.asarray(image).max() > 255, path  # mode, depth kept
    with Image.open(paths[0]) as raw:
        assert raw.mode == "I;16B"
    # predict.py on them and an ordinary image: every row is written, none lost.
    Image.new("RGB", (30, 30), (0, 200, 0)).save(tmp_path / "green.png")
    output = tmp_path / "out.jsonl"
    args = predict.PredictArguments(
        model=str(model_dir),
        images=[str(p) for p in [*paths, tmp_path / "green.png"]],
        batch_size=3,
        num_beams=1,
        max_new_tokens=2,
        output=str(output),
    )
    report = predict.predict(args)
    assert report.written == 5 and not report.unreadable
    assert len(output.read_text().splitlines()) == 5
