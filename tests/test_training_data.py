"""Training data the way users hold it (mblip/training_data.py): every form of image column, built here on the spot
(paths, Image() columns, parquet with embedded bytes, imagefolder + metadata.jsonl, webdataset shards), the
per-distinct-image check and its cache, streaming with resume, and the same forms for predict.py and the feature
cache."""

import io
import json
import multiprocessing
import os
import subprocess
import tarfile

import datasets
import pytest
import torch
from conftest import make_blip2, save_llm
from PIL import Image
from safetensors.torch import load_file
from test_train_mblip import COLOURS, GERMAN, Kill, cli

from mblip import images as mblip_images
from mblip import training as train_mblip
from mblip import training_data
from mblip.processing_mblip import MBlipProcessor


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """BLIP-2 + bloom parts, four coloured PNGs, and the same eight rows in every data form."""
    root = tmp_path_factory.mktemp("forms")
    make_blip2("mt5", root / "blip2")
    save_llm("bloom", root / "llm")
    (root / "images").mkdir()
    rows = []
    for name, colour in COLOURS.items():
        Image.new("RGB", (40, 40), colour).save(root / "images" / f"{name}.png")
        rows.append({"image_id": f"{name}.png", "context": "Caption the image in German.", "label": GERMAN[name]})
        rows.append({"image_id": f"{name}.png", "context": "Question: what colour? Short answer:", "label": name})
    write_jsonl(root / "train.jsonl", rows)
    return root


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def rows_of(parts):
    return [json.loads(line) for line in (parts / "train.jsonl").read_text().splitlines()]


def png(parts, name):
    return (parts / "images" / name).read_bytes()


def embedded(parts, image_column="image"):
    """The rows with their image embedded as {"bytes", "path"} records (path: a name that exists nowhere)."""
    return [
        {image_column: {"bytes": png(parts, r["image_id"]), "path": f"gone/{r['image_id']}"}, **r}
        for r in rows_of(parts)
    ]


def make_form(form: str, parts, tmp_path) -> dict:
    """Writes the rows in `form` under tmp_path; the DataArguments that read them."""
    rows = rows_of(parts)
    if form == "jsonl paths":
        return {"train_file": str(parts / "train.jsonl"), "image_root": str(parts / "images")}
    if form == "csv + jsonl glob":
        datasets.Dataset.from_list(rows[:4]).to_csv(tmp_path / "a.csv", index=False)
        datasets.Dataset.from_list(rows[4:]).to_csv(tmp_path / "b.csv", index=False)
        return {"train_file": str(tmp_path / "*.csv"), "image_root": str(parts / "images")}
    if form == "parquet embedded bytes":
        features = datasets.Features(
            {
                "image": datasets.Image(),
                "image_id": datasets.Value("string"),
                "context": datasets.Value("string"),
                "label": datasets.Value("string"),
            }
        )
        datasets.Dataset.from_list(embedded(parts), features=features).to_parquet(tmp_path / "train.parquet")
        return {"train_file": str(tmp_path / "train.parquet"), "image_column": "image"}
    if form == "arrow Image() decoded, save_to_disk":
        dataset = datasets.Dataset.from_list(
            [{**r, "image": Image.open(parts / "images" / r["image_id"]).convert("RGB")} for r in rows]
        )
        assert isinstance(dataset.features["image"], datasets.Image)
        dataset.save_to_disk(tmp_path / "saved")
        return {"dataset_name": str(tmp_path / "saved"), "image_column": "image"}
    if form == "imagefolder + metadata.jsonl":
        folder = tmp_path / "folder"
        folder.mkdir()
        metadata = []
        for i, r in enumerate(rows):  # one file per row, so that file_name is unique
            (folder / f"{i}-{r['image_id']}").write_bytes(png(parts, r["image_id"]))
            metadata.append({"file_name": f"{i}-{r['image_id']}", "context": r["context"], "label": r["label"]})
        write_jsonl(folder / "metadata.jsonl", metadata)
        return {"dataset_name": str(folder), "image_column": "image"}
    if form == "webdataset shards, nested json fields":
        (tmp_path / "shards").mkdir()
        for shard in range(2):
            with tarfile.open(tmp_path / "shards" / f"train-{shard:05d}.tar", "w") as tar:
                for i, r in enumerate(rows[shard * 4 : shard * 4 + 4]):
                    meta = json.dumps({"context": r["context"], "label": r["label"]}).encode()
                    for ext, data in (("png", png(parts, r["image_id"])), ("json", meta)):
                        info = tarfile.TarInfo(f"{shard}-{i:04d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        return {
            "train_file": str(tmp_path / "shards" / "train-*.tar"),
            "image_column": "png",
            "prompt_column": "json.context",
            "target_column": "json.label",
        }
    raise AssertionError(form)


FORMS = [
    "jsonl paths",
    "csv + jsonl glob",
    "parquet embedded bytes",
    "arrow Image() decoded, save_to_disk",
    "imagefolder + metadata.jsonl",
    "webdataset shards, nested json fields",
]


def data_args(**kwargs):
    return train_mblip.DataArguments(**{"data_check_cache": "none", **kwargs})


def collate(parts, args, rows):
    processor = MBlipProcessor.from_pretrained(parts / "blip2", is_encoder_decoder=False)
    return train_mblip.MBlipCollator(processor, args)(rows)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_image_column_reads_the_same_pixels(parts, tmp_path, form):
    args = data_args(**make_form(form, parts, tmp_path))
    raw = training_data.load_raw_datasets(args)
    kept, report = training_data.check_split(raw["train"], args, "train")
    assert report["rows"] == 8 and report["bad_rows"] == 0, report
    reference = collate(parts, data_args(**make_form("jsonl paths", parts, tmp_path)), rows_of(parts))
    order = sorted(range(8), key=lambda i: kept[i]["_row"])
    batch = collate(parts, args, [kept[i] for i in order])
    # Same images (in each form's row order, matched by target) -> the same pixels and labels.
    targets = [training_data.get_field(kept[i], args.target_column) for i in order]
    expected = [next(j for j, r in enumerate(rows_of(parts)) if r["label"] == t) for t in targets]
    torch.testing.assert_close(batch["pixel_values"], reference["pixel_values"][expected])


def test_parquet_with_embedded_bytes_and_webdataset_shards_train(parts, tmp_path):
    for form in ("parquet embedded bytes", "webdataset shards, nested json fields"):
        (tmp_path / form.split()[0]).mkdir(parents=True, exist_ok=True)
        spec = make_form(form, parts, tmp_path / form.split()[0])
        argv = [a for a in cli(parts, tmp_path / form.split()[0] / "out", "--max_steps", "2") if a]
        i = argv.index("--train_file")
        del argv[i : i + 2]
        for key, value in spec.items():
            argv += [f"--{key}", value]
        trainer, report = train_mblip.main(argv)
        assert trainer.state.global_step == 2 and report["train"]["rows"] == 8 and report["train"]["bad_rows"] == 0


def test_bad_embedded_images_are_counted_by_reason_naming_row_column_and_what_was_found(parts, tmp_path):
    rows = embedded(parts)
    rows[1]["image"] = {"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": "broken.png"}
    rows[3]["image"] = {"bytes": None, "path": str(tmp_path / "nowhere.png")}
    rows[5]["image"] = None
    rows[6]["label"] = " "
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "context": datasets.Value("string"),
            "label": datasets.Value("string"),
        }
    )
    import pyarrow.parquet as pq

    # pyarrow's writer, with datasets' features in the schema: datasets' own would stat the missing path.
    pq.write_table(datasets.Dataset.from_list(rows, features=features).data.table, tmp_path / "bad.parquet")
    args = data_args(train_file=str(tmp_path / "bad.parquet"), image_column="image", max_bad_rows=0.6)
    kept, report = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert report["by_reason"] == {"unreadable image": 1, "missing image": 1, "no image": 1, "empty target": 1}
    assert [e["row"] for e in report["examples"]] == [1, 3, 5, 6]
    assert [e["column"] for e in report["examples"]] == ["image", "image", "image", "label"]
    assert "bytes starting" in report["examples"][0]["image"] and "nowhere.png" in report["examples"][1]["image"]
    assert sorted(kept["_row"]) == [0, 2, 4, 7]
    with pytest.raises(ValueError, match=r"4 of 8 train rows \(50.0%\) are unusable, more than --max_bad_rows 0.01"):
        strict = data_args(train_file=str(tmp_path / "bad.parquet"), image_column="image")
        training_data.check_split(training_data.load_raw_datasets(strict)["train"], strict, "train")


def test_a_list_of_embedded_images_per_row(parts, tmp_path):
    names = list(COLOURS)
    rows = [
        {
            "images": [
                {"bytes": png(parts, f"{a}.png"), "path": None},
                {"bytes": png(parts, f"{b}.png"), "path": None},
            ],
            "label": f"{a} {b}",
        }
        for a, b in zip(names, names[1:])
    ]
    features = datasets.Features({"images": datasets.List(datasets.Image()), "label": datasets.Value("string")})
    datasets.Dataset.from_list(rows, features=features).to_parquet(tmp_path / "pairs.parquet")
    args = data_args(train_file=str(tmp_path / "pairs.parquet"), image_column="images", prompt_column="")
    raw = training_data.load_raw_datasets(args)["train"]
    assert raw.features["images"].feature.decode is False  # decoded only by the collator
    kept, report = training_data.check_split(raw, args, "train")
    assert report["bad_rows"] == 0
    batch = collate(parts, args, list(kept))
    reference = collate(
        parts,
        data_args(train_file="x.jsonl", image_root=str(parts / "images"), prompt_column=""),
        [{"image_id": [f"{a}.png", f"{b}.png"], "label": "x"} for a, b in zip(names, names[1:])],
    )
    assert batch["pixel_values"].shape[:2] == (3, 2)
    torch.testing.assert_close(batch["pixel_values"], reference["pixel_values"])


def test_a_column_of_numbers_is_refused_naming_the_column(tmp_path):
    write_jsonl(tmp_path / "n.jsonl", [{"image_id": 3, "label": "x"}, {"image_id": 4, "label": "y"}])
    with pytest.raises(ValueError, match=r"--image_column 'image_id' of the train data holds int64 values, not images"):
        training_data.load_raw_datasets(data_args(train_file=str(tmp_path / "n.jsonl")))
    # A number among paths (a mixed column) is counted as "not an image" with what was found.
    problem, found, _ = training_data.scan_row({"image_id": 3.5, "label": "x"}, data_args(train_file="x.jsonl"))
    assert problem == "not an image" and found == "float 3.5"


def test_each_distinct_image_is_checked_once_and_the_check_is_cached(parts, tmp_path, monkeypatch):
    rows = rows_of(parts) * 3  # 24 rows over 4 images, one missing
    rows.append({"image_id": "missing.png", "context": "x", "label": "y"})
    write_jsonl(tmp_path / "many.jsonl", rows)
    checked = counted_checks(monkeypatch)
    args = data_args(
        train_file=str(tmp_path / "many.jsonl"),
        image_root=str(parts / "images"),
        data_check_cache=str(tmp_path / "checks"),
        max_bad_rows=0.1,
    )
    first, report = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert len(checked) == 5 and len(set(checked)) == 5  # each distinct image once
    assert report["by_reason"] == {"missing image": 1} and report["examples"][0]["row"] == 24
    checked.clear()
    again, report_again = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert checked == [] and report_again == report and again["_row"] == first["_row"]
    # One cache per dataset: its outcome and its per-image table (verdicts with their files' stamps).
    assert sorted(p.name.split(".", 1)[1] for p in (tmp_path / "checks").iterdir()) == ["images.parquet", "json"]
    args.recheck_images = True
    training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert len(checked) == 5


def copied_images(parts, folder):
    """A writable copy of the four PNGs (the module's own must not change)."""
    folder.mkdir()
    for name in COLOURS:
        (folder / f"{name}.png").write_bytes(png(parts, f"{name}.png"))
    return folder


def counted_checks(monkeypatch) -> list:
    """The sources the data check opens from now on (the real check runs)."""
    checked = []
    real = mblip_images.check_image
    monkeypatch.setattr(mblip_images, "check_image", lambda source: (checked.append(source), real(source))[1])
    return checked


def cached_check_args(tmp_path, images):
    """Data arguments for t.jsonl over `images`, with the data check's cache in tmp_path/checks."""
    return data_args(
        train_file=str(tmp_path / "t.jsonl"),
        image_root=str(images),
        data_check_cache=str(tmp_path / "checks"),
        max_bad_rows=0.5,
    )


def test_a_restored_missing_image_is_checked_again_and_its_rows_used(parts, tmp_path, monkeypatch):
    images = copied_images(parts, tmp_path / "images")
    write_jsonl(tmp_path / "t.jsonl", rows_of(parts))
    args = cached_check_args(tmp_path, images)
    checked = counted_checks(monkeypatch)
    blue = (images / "blue.png").read_bytes()
    (images / "blue.png").unlink()
    _, report = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert report["by_reason"] == {"missing image": 2} and len(checked) == 4
    # Restored: the dataset (and its fingerprint) did not change, the file did; only it is checked again.
    (images / "blue.png").write_bytes(blue)
    checked.clear()
    kept, report = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert report["bad_rows"] == 0 and sorted(kept["_row"]) == list(range(8)), report
    assert checked == [str(images / "blue.png")]
    # The refreshed cache holds: a third run opens no image and agrees.
    checked.clear()
    again, report_again = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert checked == [] and report_again == report and again["_row"] == kept["_row"]


def test_a_cached_ok_image_truncated_in_place_is_checked_again_and_counted(parts, tmp_path, monkeypatch):
    images = copied_images(parts, tmp_path / "images")
    write_jsonl(tmp_path / "t.jsonl", rows_of(parts))
    args = cached_check_args(tmp_path, images)
    _, report = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert report["bad_rows"] == 0
    checked = counted_checks(monkeypatch)
    size = (images / "red.png").stat().st_size
    os.truncate(images / "red.png", size // 2)
    kept, report = training_data.check_split(training_data.load_raw_datasets(args)["train"], args, "train")
    assert checked == [str(images / "red.png")]
    assert report["by_reason"] == {"unreadable image": 2}, report
    assert {e["row"] for e in report["examples"]} == {0, 1} and "red.png" in report["examples"][0]["image"]
    assert 0 not in kept["_row"] and 1 not in kept["_row"] and len(kept) == 6


def test_the_image_check_forks_its_workers_even_where_processes_are_spawned(tmp_path, monkeypatch):
    """Started any other way (spawn, a fork server: Python 3.14's default), each worker would import the mblip package
    (transformers, torch) before checking an image: 10-40 s on 2 cores, against 0.1 s forked."""
    if training_data.check_pool_context() is None:
        pytest.skip("this platform does not fork safely")
    names = [f"{i}.png" for i in range(4)]
    for name in names:
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    dataset = datasets.Dataset.from_dict({"image_id": names, "label": ["x"] * len(names)})
    args = data_args(
        train_file="x.jsonl", image_root=str(tmp_path), prompt_column="", preprocessing_num_workers=2, max_bad_rows=0.5
    )
    monkeypatch.setattr(training_data, "PARALLEL_FROM", 1)
    # Forked workers inherit this stand-in check; spawned ones would run the real one, which passes every image.
    monkeypatch.setattr(mblip_images, "check_kind", lambda path: "unreadable" if path.endswith("0.png") else "")
    default = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        _, report = training_data.check_split(dataset, args, "train")
    finally:
        multiprocessing.set_start_method(default, force=True)
    assert report["by_reason"] == {"unreadable image": 1}, report


def test_the_features_cache_keys_embedded_images_by_content(parts, tmp_path):
    from mblip.modeling_mblip import MBlipForConditionalGeneration

    model = MBlipForConditionalGeneration.from_pretrained(parts / "blip2").eval()
    processor = MBlipProcessor.from_pretrained(parts / "blip2", is_encoder_decoder=False)
    args = data_args(**make_form("parquet embedded bytes", parts, tmp_path), image_features_cache=str(tmp_path / "c"))
    dataset = training_data.load_raw_datasets(args)["train"]
    cache = train_mblip.build_image_features_cache(model, processor, [dataset], args, batch_size=4)
    assert len(cache.shard_of) == 4  # 8 rows, 4 distinct images; their record paths exist nowhere
    from_paths = train_mblip.build_image_features_cache(
        model,
        processor,
        [datasets.Dataset.from_list(rows_of(parts))],
        data_args(train_file="x.jsonl", image_root=str(parts / "images"), image_features_cache=str(tmp_path / "p")),
        4,
    )
    collator = train_mblip.MBlipCollator(processor, args, features=cache)
    batch = collator([dataset[0], dataset[2]])
    key = str(parts / "images" / rows_of(parts)[2]["image_id"])
    torch.testing.assert_close(batch["image_embeds"][1], from_paths.load([key])[0])


def test_the_features_cache_encodes_an_image_edited_in_place_again(parts, tmp_path):
    from mblip.modeling_mblip import MBlipForConditionalGeneration

    model = MBlipForConditionalGeneration.from_pretrained(parts / "blip2").eval()
    processor = MBlipProcessor.from_pretrained(parts / "blip2", is_encoder_decoder=False)
    images = copied_images(parts, tmp_path / "images")
    args = data_args(train_file="x.jsonl", image_root=str(images), image_features_cache=str(tmp_path / "c"))
    dataset = datasets.Dataset.from_list(rows_of(parts))
    train_mblip.build_image_features_cache(model, processor, [dataset], args, batch_size=4)
    # Edited in place, same name and size: only its modification time tells.
    size = (images / "red.png").stat().st_size
    Image.new("RGB", (40, 40), (30, 200, 200)).save(images / "red.png")  # cyan
    assert (images / "red.png").stat().st_size == size
    cache = train_mblip.build_image_features_cache(model, processor, [dataset], args, batch_size=4)
    assert len(cache.shard_of) == 5 and len(list((tmp_path / "c").glob("shard-*"))) == 2  # only red encoded again
    rows = [rows_of(parts)[0], rows_of(parts)[2]]  # red (edited), green
    served = train_mblip.MBlipCollator(processor, args, features=cache)(rows)["image_embeds"]
    pixels = train_mblip.MBlipCollator(processor, args)(rows)["pixel_values"]  # no cache at all
    with torch.no_grad():
        fresh = model.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(served, fresh)


# ------------------------------------------------------------------------------------------------ streaming
STREAM = ["--streaming", "--max_steps", "6", "--per_device_train_batch_size", "2", "--lora_dropout", "0.1"]


def test_streaming_needs_max_steps_and_no_loader_workers(parts, tmp_path):
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        train_mblip.main(cli(parts, tmp_path / "a", "--streaming"))
    with pytest.raises(ValueError, match="drop --dataloader_num_workers 2"):
        train_mblip.main(cli(parts, tmp_path / "b", "--streaming", "--max_steps", "2", "--dataloader_num_workers", "2"))


def test_a_killed_streaming_run_resumes_to_the_same_weights_and_counts(parts, tmp_path):
    rows = rows_of(parts)
    rows.insert(3, {"image_id": "missing.png", "context": "x", "label": "y"})
    write_jsonl(tmp_path / "stream.jsonl", rows * 2)  # 18 rows, 2 bad
    extra = [*STREAM, "--save_strategy", "steps", "--save_steps", "2", "--augment", "--max_bad_rows", "0.2"]
    train_file = tmp_path / "stream.jsonl"
    _, straight = train_mblip.main(cli(parts, tmp_path / "straight", *extra, train_file=train_file))
    with pytest.raises(KeyboardInterrupt):
        train_mblip.main(cli(parts, tmp_path / "killed", *extra, train_file=train_file), callbacks=[Kill(at=3)])
    saved = json.loads((tmp_path / "killed" / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["StreamState"]["attributes"]["stream"]["dataset"]
    trainer, resumed = train_mblip.main(cli(parts, tmp_path / "killed", *extra, train_file=train_file))
    assert trainer.state.global_step == 6
    assert resumed["train"] == straight["train"]
    assert straight["train"]["by_reason"] == {"missing image": 2} and straight["train"]["examples"][0]["row"] == 3
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_stream_past_max_bad_rows_fails(parts, tmp_path):
    rows = rows_of(parts)[:4] + [{"image_id": "missing.png", "context": "x", "label": "y"}] * 4
    write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"4 of 8 train rows \(50.0%\) are unusable"):
        train_mblip.main(cli(parts, tmp_path / "o", *STREAM, train_file=tmp_path / "bad.jsonl"))


RECORD_ROWS = """
import json, os, sys
from mblip import training
from test_train_mblip import Kill

seen = []
call = training.MBlipCollator.__call__
def record(self, rows):
    seen.extend(int(r["_row"]) for r in rows)
    return call(self, rows)
training.MBlipCollator.__call__ = record
kill = int(os.environ.get("KILL_AT", "0"))
try:
    training.main(sys.argv[1:], callbacks=[Kill(at=kill)] if kill else None)
finally:
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(os.environ["SEEN_DIR"], f"rank{rank}-{kill}.json"), "w") as f:
        json.dump(seen, f)
"""


def test_two_processes_stream_distinct_rows_and_resume_to_the_same_weights(parts, tmp_path):
    rows = rows_of(parts) * 2 + [{"image_id": "missing.png", "context": "x", "label": "y"}]
    write_jsonl(tmp_path / "s.jsonl", rows[:8] + rows[-1:] + rows[8:])  # 17 rows, row 8 is bad
    (tmp_path / "record.py").write_text(RECORD_ROWS)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "SEEN_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.getcwd()]),
    }
    extra = [*STREAM[:-2], "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1", "--max_bad_rows", "0.2"]

    def launch(output, kill=0):
        command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", str(tmp_path / "record.py")]
        command += cli(parts, tmp_path / output, *extra, train_file=tmp_path / "s.jsonl")
        result = subprocess.run(command, capture_output=True, text=True, env={**env, "KILL_AT": str(kill)}, timeout=600)
        return result, [json.loads((tmp_path / f"rank{r}-{kill}.json").read_text()) for r in (0, 1)]

    result, (rank0, rank1) = launch("straight")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # 3 steps x 2 rows x 2 processes = 12 good rows: each process its own, none twice, the bad row 8 nowhere (the
    # data loader collates one batch ahead, which is never trained on).
    assert not set(rank0) & set(rank1) and 8 not in rank0 + rank1
    assert sorted(rank0[:6] + rank1[:6]) == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]
    report = json.loads((tmp_path / "straight" / "data_report.json").read_text())
    assert report["train"]["by_reason"] == {"missing image": 1} and report["train"]["rows"] == 13
    result, _ = launch("killed", kill=2)
    assert result.returncode != 0 and (tmp_path / "killed" / "checkpoint-1").is_dir()
    result, (resumed0, resumed1) = launch("killed")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The stream restarts from the checkpoint's state: the rows of step 1 are not read (nor collated) again.
    assert not {0, 1, 2, 3} & set(resumed0 + resumed1) and 4 in resumed0 + resumed1
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------------ predict.py
@pytest.mark.parametrize(
    "form", ["parquet embedded bytes", "imagefolder + metadata.jsonl", "webdataset shards, nested json fields"]
)
def test_predict_reads_every_form_like_image_files(parts, tmp_path, form):
    from test_predict import speaking_model

    from mblip import predict

    model_and_processor = speaking_model()
    spec = make_form(form, parts, tmp_path)
    source = {"data_files": spec["train_file"]} if "train_file" in spec else {"dataset_name": spec["dataset_name"]}
    prompt_column = spec.get("prompt_column", "context")
    args = predict.PredictArguments(
        **source,
        image_column=spec["image_column"],
        prompt_column=prompt_column,
        output=str(tmp_path / "p.jsonl"),
        num_beams=1,
        max_new_tokens=6,
    )
    report = predict.predict(args, model_and_processor)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert report.written == 8 and len(rows) == 8
    # The same images as files, with the same prompts: the same texts.
    dataset, _ = training_data.load_dataset_for_inference(
        source.get("dataset_name"), None, None, source.get("data_files"), spec["image_column"]
    )
    files = tmp_path / "as_files"
    files.mkdir()
    for i in range(len(dataset)):
        record = dataset[i][spec["image_column"]]
        data = record["bytes"] or open(record["path"], "rb").read()
        (files / f"{i}.png").write_bytes(data)
        assert rows[i]["prompt"] == training_data.get_field(dataset[i], prompt_column)
        (files / f"{i}.jsonl").write_text(json.dumps({"image": f"{i}.png", "prompt": rows[i]["prompt"]}) + "\n")
        reference = predict.PredictArguments(
            prompts_file=str(files / f"{i}.jsonl"), num_beams=1, max_new_tokens=6, output=str(files / f"{i}.out")
        )
        predict.predict(reference, model_and_processor)
        assert json.loads((files / f"{i}.out").read_text())["text"] == rows[i]["text"]
    if "train_file" in spec and form.startswith("parquet"):
        assert rows[0]["image"] == "train[0] (gone/red.png)"  # an embedded image is named by its row


def test_predict_counts_bad_dataset_rows_and_refuses_a_column_of_numbers(parts, tmp_path):
    from test_predict import speaking_model

    from mblip import predict

    rows = embedded(parts)[:4]
    rows[1]["image"] = {"bytes": b"not an image at all", "path": "x.png"}
    rows[2]["image"] = None
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "context": datasets.Value("string"),
            "label": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(tmp_path / "bad.parquet")
    args = predict.PredictArguments(
        data_files=str(tmp_path / "bad.parquet"), num_beams=1, max_new_tokens=4, max_bad_rows=0.6
    )
    report = predict.predict(args, speaking_model())
    assert report.written == 2 and report.bad_rows.count == 2
    assert [name for name, _ in report.unreadable] == ["train[1] (x.png)", "train[2]"]
    write_jsonl(tmp_path / "n.jsonl", [{"image": 1}, {"image": 2}])
    with pytest.raises(ValueError, match="--image_column 'image' of the train split holds int64 values"):
        predict.predict(predict.PredictArguments(data_files=str(tmp_path / "n.jsonl")), speaking_model())


# ------------------------------------------------------------------------------------------------ the bench
def test_the_data_scale_rehearsal_runs_at_tiny_size_and_renders(tmp_path):
    from mblip.bench import data_scale

    results = data_scale.run("tiny", workdir=str(tmp_path))
    assert set(results["runs"]) == {"file", "file (check cached)", "streaming"}
    for mode, by_rows in results["runs"].items():
        for run in by_rows.values():
            assert run["seconds"] > 0 and run["peak_rss_gib"] > 0.1, (mode, run)
        assert "check rows and images" in by_rows["3000"]["phases"] or mode == "streaming"
    assert results["runs"]["file (check cached)"]["3000"]["phases"]["check rows and images"] < 0.5
    assert 30 <= results["subset"]["images"]["kib_mean"] <= 100  # realistic JPEG sizes
    assert results["collation"]["samples_per_s"]["workers_0"] > 0
    text = "\n".join(data_scale.report_section(results))
    assert "2,500,000 rows over 200,000 JPEGs in 96 languages" in text and "samples/s" in text
