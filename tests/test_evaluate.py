"""effscale evaluate: label maps, scoring, resizing, CLI errors (fast) and real ImageNet weights (slow)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from conftest import shared_file
from effscale import evaluate as E
from effscale.errors import ConfigError

IMAGENETTE = "imagenette-val-500.tar.gz"
# Imagenette's 10 ImageNet classes (wnid -> ImageNet-1k index), from the tarball's README/CSV.
IMAGENETTE_INDEX = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
                    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
LITE0_MIN_TOP1 = 0.70  # a correct port scores about 72-75% here, a wrong layout about 0%


# ---- label maps ----------------------------------------------------------------------------

def test_label_map_with_header_and_names(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("wnid,imagenet_index,name\nn01440764,0,tench\nn02102040,217,English springer\n")
    labels = E.read_label_map(path)
    assert labels.index == {"n01440764": 0, "n02102040": 217}
    assert labels.names["n02102040"] == "English springer"


def test_label_map_without_header(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("cat,3\ndog,5\n\n# comment\n")
    assert E.read_label_map(path).index == {"cat": 3, "dog": 5}


@pytest.mark.parametrize("text,message", [
    ("cat,3\ndog,x\n", "line 2: class index 'x' is not an integer"),
    ("cat,3\ncat,4\n", "'cat' is mapped twice"),
    ("cat\n", "expected 'folder,class_index"),
    ("a,b\n", "maps no folders"),
    ("cat,-1\n", "negative"),
])
def test_bad_label_maps(tmp_path, text, message):
    path = tmp_path / "map.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        E.read_label_map(path)


def test_label_map_read_from_inside_a_dataset_tarball(tmp_path):
    tar_path = tmp_path / "data.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        blob = b"wnid,imagenet_index,name\nn01440764,0,tench\n"
        info = tarfile.TarInfo("./val/imagenet_index.csv")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    labels = E.read_label_map("val/imagenet_index.csv", str(tar_path))
    assert labels.index == {"n01440764": 0} and labels.source.endswith("val/imagenet_index.csv")
    with pytest.raises(ConfigError, match="not found on disk or inside"):
        E.read_label_map("val/other.csv", str(tar_path))


# ---- dataset classes -> model outputs --------------------------------------------------------

def _images(names=("cat", "dog")):
    return E.EvalImages(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), tuple(names), "toy", "val")


def test_targets_through_label_map_by_name_and_by_position():
    images = _images()
    assert E.target_indices(images, 1000, E.LabelMap({"cat": 281, "dog": 207}), None).tolist() == [281, 207]
    assert E.target_indices(images, 3, None, ("bird", "dog", "cat")).tolist() == [2, 1]
    assert E.target_indices(images, 2, None, None).tolist() == [0, 1]


@pytest.mark.parametrize("outputs,labels,model_classes,message", [
    (1000, None, None, "1000 outputs but the dataset has 2 classes; pass --label-map"),
    (1000, E.LabelMap({"cat": 1}, source="m.csv"), None, "no entry for 1 folder.*'dog'"),
    (10, E.LabelMap({"cat": 1, "dog": 12}, source="m.csv"), None, "uses class index 12 but the model has 10"),
    (2, None, ("cat", "bird"), "does not know 'dog'"),
])
def test_label_mismatches_are_refused(outputs, labels, model_classes, message):
    with pytest.raises(ConfigError, match=message):
        E.target_indices(_images(), outputs, labels, model_classes)


def test_score_top1_top5():
    probs = np.zeros((3, 10))
    probs[0, 4] = 1.0  # right
    probs[1, [1, 2, 3, 4, 5, 6]] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # label 5 is 5th: top-5 hit only
    probs[2, [1, 2, 3, 4, 5, 6]] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # label 6 is 6th: miss
    result = E.score(probs, np.array([4, 5, 6]))
    assert result["top1"] == pytest.approx(1 / 3) and result["top5"] == pytest.approx(2 / 3)


def test_resize_plain_and_crop():
    image = np.zeros((1, 64, 96, 3), np.uint8)
    image[:, :, :16] = 255  # a white band at the left edge, outside the centre crop
    plain = E.resize_images(image, 32, "plain")
    crop = E.resize_images(image, 32, "crop")
    assert plain.shape == crop.shape == (1, 32, 32, 3)
    assert plain[0, :, 0].min() == 255  # whole image kept: the band survives
    assert crop.max() == 0  # the centre crop (side 64 * 32 / (32 + 32) = 32, from x=32) drops it
    same = np.arange(2 * 16 * 16 * 3, dtype=np.uint8).reshape(2, 16, 16, 3)
    assert E.resize_images(same, 16, "plain") is same


# ---- CLI errors (no Keras model is built) -----------------------------------------------------

@pytest.mark.parametrize("args,code,fragment", [
    (["evaluate", "--dataset", "x"], 2, "pass either --variant NAME --weights W, or --model"),
    (["evaluate", "--variant", "lite0", "--dataset", "x"], 2, "--variant needs --weights"),
    (["evaluate", "--variant", "lite0", "--weights", "lite9", "--dataset", "x"], 1, "unknown weights 'lite9'"),
    (["evaluate", "--variant", "lite0", "--weights", "no/such.pth", "--dataset", "x"], 1, "not found"),
    (["evaluate", "--variant", "b0", "--weights", "lite0", "--dataset", "x"], 1,
     "are EfficientNet-Lite weights and do not fit b0"),
    (["evaluate", "--model", "m.keras", "--weights", "lite0", "--dataset", "x"], 2, "go with --variant"),
    (["evaluate", "--variant", "lite0", "--weights", "lite0", "--dataset", "x", "--label-map", "nope.csv"], 1,
     "label map nope.csv not found"),
    (["evaluate", "--model", "nope.keras", "--dataset", "x"], 1, "model nope.keras does not exist"),
    (["evaluate", "--model", ".", "--dataset", "x"], 1, "has no checkpoints/best.keras or last.keras"),
])
def test_cli_bad_input_is_one_line(run_cli, args, code, fragment):
    exit_code, _out, err = run_cli(*args)
    assert exit_code == code
    assert err.count("\n") == 1 and err.startswith("Error: ") and fragment in err


def test_cli_refuses_a_malicious_weights_file_without_running_it(run_cli, tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    code, _, err = run_cli("evaluate", "--variant", "lite0", "--weights", str(path), "--dataset", "x")
    assert code == 1 and "nothing was executed" in err and not marker.exists()


# ---- real weights on real images --------------------------------------------------------------

def _need_lite(name: str) -> None:
    from test_weights import need_registry_package

    need_registry_package(name)


def test_imagenette_label_map_matches_the_tarball():
    labels = E.read_label_map("val/imagenet_index.csv", str(shared_file(IMAGENETTE)))
    assert labels.index == IMAGENETTE_INDEX


def test_wrong_architecture_fails_before_loading_data(run_cli):
    _need_lite("lite1")
    code, _, err = run_cli("evaluate", "--variant", "lite0", "--weights", "lite1", "--dataset", "does-not-exist")
    assert code == 1 and "checkpoint does not fit lite0" in err and "looks like lite1" in err


@pytest.mark.slow
def test_lite0_imported_weights_score_on_imagenette(run_cli, tmp_path):
    """Imported Lite0 weights score >= 70% top-1 over all 1000 ImageNet classes (about 20 s on 2 CPUs)."""
    _need_lite("lite0")
    data = shared_file(IMAGENETTE)
    code, out, err = run_cli("evaluate", "--variant", "lite0", "--weights", "lite0", "--dataset", str(data),
                             "--label-map", "val/imagenet_index.csv", "--cache-dir", str(tmp_path / "cache"),
                             "--format", "json", "--output", str(tmp_path / "out"))
    assert code == 0, err
    result = json.loads(out)
    summary = result["summary"]
    assert summary["images"] == 500 and summary["outputs"] == 1000 and summary["input_size"] == 224
    assert summary["top1"] >= LITE0_MIN_TOP1, summary
    assert summary["top5"] >= 0.85, summary
    assert {r["class"]: r["model_index"] for r in result["per_class"]} == IMAGENETTE_INDEX
    assert all(r["images"] == 50 for r in result["per_class"])
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert written["summary"]["top1"] == summary["top1"]
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 501


@pytest.mark.slow
def test_saved_keras_model_is_scored_with_its_class_names(run_cli, tmp_path):
    """A .keras model in a run directory: outputs matched to folders by the run's class names."""
    import keras
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    # Class "bright" images are white, "dark" ones black; the model's outputs are in the other order.
    for cls, value in (("bright", 250), ("dark", 5)):
        (root / "val" / cls).mkdir(parents=True)
        for i in range(4):
            noise = rng.integers(0, 5, (32, 32, 3))
            Image.fromarray(np.clip(value + noise, 0, 255).astype(np.uint8)).save(root / "val" / cls / f"{i}.png")
    inputs = keras.Input((32, 32, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(mean))
    # logit(bright) - logit(dark) = (sum of channel means - 384) / 15: output 0 = dark, output 1 = bright.
    dense.set_weights([np.array([[-1, 1]] * 3, np.float32) / 30, np.array([12.8, -12.8], np.float32)])
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model.save(run / "checkpoints" / "best.keras")
    (run / "metrics.json").write_text(json.dumps({"class_names": ["dark", "bright"], "variant": "toy"}))
    code, out, err = run_cli("evaluate", "--model", str(run), "--dataset", str(root), "--format", "json",
                             "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    result = json.loads(out)
    assert result["summary"]["top1"] == 1.0
    assert {r["class"]: r["model_index"] for r in result["per_class"]} == {"bright": 1, "dark": 0}


def test_flip_averages_each_image_with_its_mirror(run_cli, tmp_path):
    """A model that reads left against right: on the images alone it is always right; with
    --flip every image is averaged with its mirror, which says the opposite a little more
    loudly for class 0 (the bias), so every image is called class 1 and top-1 halves."""
    import keras
    from PIL import Image

    root = tmp_path / "imgs"
    for cls, (left, right) in (("left", (250, 5)), ("right", (5, 250))):
        (root / "val" / cls).mkdir(parents=True)
        for i in range(3):
            image = np.full((32, 32, 3), right, np.uint8)
            image[:, :16] = left
            Image.fromarray(image).save(root / "val" / cls / f"{i}.png")
    inputs = keras.Input((32, 32, 3))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    sign = np.ones((32, 32, 3), np.float32)
    sign[:, 16:] = -1  # mean(sign * x) = +-122.5 for the two classes
    column = (10 / 122.5) * sign.reshape(-1, 1) / sign.size / 2
    dense.set_weights([np.hstack([column, -column]), np.array([-0.5, 0.5], np.float32)])  # z0 - z1 = +-10 - 1
    model.save(tmp_path / "lr.keras")
    common = ("evaluate", "--model", str(tmp_path / "lr.keras"), "--dataset", str(root), "--format", "json",
              "--cache-dir", str(tmp_path / "cache"))
    code, out, err = run_cli(*common)
    assert code == 0, err
    alone = json.loads(out)["summary"]
    code, out, err = run_cli(*common, "--flip")
    assert code == 0, err
    flipped = json.loads(out)
    assert (alone["top1"], alone["views"]) == (1.0, "image")
    assert (flipped["summary"]["top1"], flipped["summary"]["views"]) == (0.5, "image+flip")
    assert {r["class"]: r["top1"] for r in flipped["per_class"]} == {"left": 0.0, "right": 1.0}


@pytest.mark.parametrize("value", ["1e30", "99999999999999999999999", "nan", "inf", "-1", "0"])
@pytest.mark.parametrize("option", ["--image-size", "--batch-size", "--limit"])
def test_cli_numeric_options_fail_in_one_line(run_cli, tmp_path, option, value):
    exit_code, _out, err = run_cli("evaluate", "--variant", "lite0", "--weights", "lite0",
                                   "--dataset", str(tmp_path / "missing"), option, value)
    assert exit_code in (1, 2)
    lines = err.rstrip("\n").split("\n")  # progress lines may precede the error
    assert lines[-1].startswith("Error: ") and sum(line.startswith("Error") for line in lines) == 1
    assert "Unexpected" not in err and "Traceback" not in err


def test_imagefolder_layout_is_accepted(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "photos" / cls / "0.png")
    images = E.load_images(str(tmp_path / "photos"), cache_dir=tmp_path / "cache")
    assert (images.split, images.class_names, images.y.tolist()) == ("images", ("cat", "dog"), [0, 1])


def test_library_call_refuses_bad_combinations_in_one_line():
    import effscale.evaluate

    with pytest.raises(ConfigError, match="pass either a variant with weights, or a saved model"):
        effscale.evaluate(dataset="x")  # the module is the library call
    with pytest.raises(ConfigError, match="a variant needs weights"):
        effscale.evaluate.evaluate("x", variant="lite0")
