"""`sparkdl export`: the exported ONNX / TorchScript files agree with the model (torch) on real photos, take any batch
size, run with onnxruntime / torch alone (no sparkdl importable), and carry what a non-sparkdl user needs (the
sidecar's preprocessing, applied by plain PIL/numpy code here, gives predict's top-1). Refusals are one line and
leave nothing behind. No Spark."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datagen
from sparkdl.errors import ConfigError, DataError
from sparkdl.infer.classifier import ImageClassifier
from sparkdl.infer.export import ExportConfig, export_model

BACKBONES = ("tiny", "efficientnet_lite0")
FORMATS = ("onnx", "torchscript")
TOL = 1e-4
README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")


def _photos() -> dict[str, bytes]:
    """Real photographs that ship with scikit-learn (a dependency): 640 x 427 JPEGs."""
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    return {name: (folder / name).read_bytes() for name in ("china.jpg", "flower.jpg")}


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return _photos()


@pytest.fixture(scope="module")
def images(photos) -> list[bytes]:
    """The real photos plus a few of datagen's synthetic JPEGs (another size and aspect)."""
    return list(photos.values()) + [datagen.jpeg_bytes(seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {name: datagen.make_bundle(root / name, name) for name in BACKBONES}


@pytest.fixture(scope="module")
def classifiers(bundles) -> dict[str, ImageClassifier]:
    return {name: ImageClassifier.load(path) for name, path in bundles.items()}


@pytest.fixture(scope="module")
def exported(bundles, tmp_path_factory):
    """Each backbone x format exported once: {(backbone, format): ExportResult}."""
    out = tmp_path_factory.mktemp("exported")
    suffix = {"onnx": "onnx", "torchscript": "pt"}
    return {(b, f): export_model(ExportConfig(str(bundles[b]), str(out / f"{b}.{suffix[f]}"), f))
            for b in BACKBONES for f in FORMATS}  # fmt: skip


def _run(path: str, fmt: str, batch: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(["probabilities"], {"input": batch})[0]
    import torch

    with torch.no_grad():
        return torch.jit.load(path).eval()(torch.from_numpy(batch)).numpy()


def _decoded(classifier: ImageClassifier, images: list[bytes]) -> np.ndarray:
    return np.stack([classifier.decode(img) for img in images])


# -- agreement with torch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_exported_file_matches_torch_on_real_photos(exported, classifiers, images, backbone, fmt):
    classifier = classifiers[backbone]
    batch = _decoded(classifier, images)
    expected = classifier.probabilities(batch)
    got = _run(exported[backbone, fmt].output, fmt, batch)
    assert got.shape == expected.shape == (len(images), 3) and got.dtype == np.float32
    diff = float(np.abs(got - expected).max())
    print(f"{backbone} {fmt}: max |exported - torch| = {diff:.3g} over {len(images)} images")
    assert diff < TOL
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert exported[backbone, fmt].max_abs_diff is not None and exported[backbone, fmt].max_abs_diff < TOL


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_dynamic_batch(exported, classifiers, images, backbone, fmt):
    classifier = classifiers[backbone]
    crop = classifier.preprocess.crop
    five = _decoded(classifier, images)
    assert len(five) == 5
    for batch in (five[:1], five):
        got = _run(exported[backbone, fmt].output, fmt, batch)
        assert got.shape == (len(batch), 3)
        np.testing.assert_allclose(got, classifier.probabilities(batch), atol=TOL, rtol=0)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(exported[backbone, fmt].output, providers=["CPUExecutionProvider"])
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (inp.name, inp.shape, inp.type) == ("input", ["batch", 3, crop, crop], "tensor(float)")
        assert (out.name, out.shape) == ("probabilities", ["batch", 3])


# -- the sidecar: what a user without sparkdl needs ------------------------------------------------------------------


def _plain_preprocess(data: bytes, p: dict) -> np.ndarray:
    """The sidecar's steps with PIL and numpy only (written from the sidecar, not from sparkdl's code)."""
    import io

    img = Image.open(io.BytesIO(data))
    if p["jpeg_draft"] and img.format == "JPEG":
        img.draft("RGB", (p["resize"], p["resize"]))
    img = img.convert("RGB")
    w, h = img.size
    s = p["resize"] / min(w, h)
    size = (max(p["crop"], round(w * s)), max(p["crop"], round(h * s)))
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)
    left, top = (size[0] - p["crop"]) // 2, (size[1] - p["crop"]) // 2
    x = np.asarray(img.crop((left, top, left + p["crop"], top + p["crop"])), dtype=np.float32)
    if p["channel_order"] == "BGR":
        x = x[:, :, ::-1]
    x = (x * np.float32(p["scale"]) - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    assert p["layout"] == "NCHW"
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_sidecar_preprocessing_reproduces_predict(exported, classifiers, images, backbone):
    import onnxruntime as ort

    result = exported[backbone, "onnx"]
    meta = json.loads(Path(result.sidecar).read_text())
    batch = np.stack([_plain_preprocess(img, meta["preprocessing"]) for img in images])
    np.testing.assert_allclose(batch, _decoded(classifiers[backbone], images), atol=1e-6, rtol=0)
    session = ort.InferenceSession(result.output, providers=["CPUExecutionProvider"])
    probs = session.run([meta["output"]["name"]], {meta["input"]["name"]: batch})[0]
    predictions = classifiers[backbone].predict(images)
    assert [meta["labels"][i] for i in probs.argmax(1)] == [p.label for p in predictions]
    np.testing.assert_allclose(probs.max(1), [p.probability for p in predictions], atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sidecar_contents(exported, classifiers, fmt):
    result, classifier = exported["efficientnet_lite0", fmt], classifiers["efficientnet_lite0"]
    meta = json.loads(Path(result.sidecar).read_text())
    assert Path(result.sidecar) == Path(result.output + ".json")
    assert meta["format"] == "sparkdl.export/1" and meta["file"] == Path(result.output).name and meta["file_format"] == fmt
    assert meta["opset"] == (17 if fmt == "onnx" else None) == result.opset
    assert meta["labels"] == ["ak47", "american-flag", "backpack"] == list(result.labels)
    assert meta["input"] == {"name": "input", "dtype": "float32", "shape": ["batch", 3, 224, 224], "layout": "NCHW"}
    assert meta["output"]["name"] == "probabilities" and meta["output"]["shape"] == ["batch", 3]
    pre = meta["preprocessing"]
    recorded = {k: pre[k] for k in ("resize", "crop", "mean", "std", "scale", "channel_order")}
    assert recorded == json.loads(json.dumps(classifier.preprocess.to_json()))
    assert pre["layout"] == "NCHW" and pre["mean"] == [0.5, 0.5, 0.5] and pre["jpeg_draft"] is True and pre["steps"]
    assert meta["model_sha256"] == classifier.model_sha256 == result.model_sha256
    assert meta["backbone"]["name"] == "efficientnet_lite0" and meta["backbone"]["feature_dim"] == 1280
    assert "carried" not in meta["backbone"] and meta["backbone"]["weights"].startswith("package:")
    assert meta["backbone_carried"] == "package"
    assert meta["file_sha256"] == hashlib.sha256(Path(result.output).read_bytes()).hexdigest() == result.file_sha256
    assert meta["checked"]["max_abs_diff"] < TOL and meta["checked"]["batch"] == 3
    assert not list(Path(result.output).parent.glob("*.partial"))


def test_onnx_metadata_props_and_torchscript_extra_file(exported):
    import onnx
    import torch

    result = exported["efficientnet_lite0", "onnx"]
    meta = json.loads(Path(result.sidecar).read_text())
    model = onnx.load(result.output)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["labels"]) == meta["labels"]
    assert json.loads(props["preprocessing"]) == meta["preprocessing"]
    assert props["model_sha256"] == meta["model_sha256"] and props["sparkdl.format"] == "sparkdl.export/1"
    whole = json.loads(props["sparkdl.export"])
    assert whole["input"] == meta["input"] and whole["backbone"] == meta["backbone"]
    assert model.opset_import[0].version == 17
    onnx.checker.check_model(model)

    ts = exported["efficientnet_lite0", "torchscript"]
    extra = {"sparkdl.json": ""}
    torch.jit.load(ts.output, _extra_files=extra)
    described = json.loads(extra["sparkdl.json"])
    assert described["labels"] == meta["labels"] and described["preprocessing"] == meta["preprocessing"]


# -- without sparkdl ---------------------------------------------------------------------------------------------


def _isolated(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in ``python -I -S``: no site processing (so the editable install's path hook is not there), only
    the directories holding onnxruntime, numpy, Pillow and torch on sys.path, the repo nowhere; checks inside that
    ``import sparkdl`` fails."""
    import onnxruntime
    import PIL
    import torch

    import sparkdl

    dirs = sorted({str(Path(m.__file__).resolve().parents[1]) for m in (onnxruntime, np, PIL, torch)})
    repo = str(Path(sparkdl.__file__).resolve().parents[1])
    assert repo not in dirs, "sparkdl is installed beside onnxruntime (not editable): this isolation cannot hide it"
    prelude = textwrap.dedent(f"""
        import sys
        sys.path[:] = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p] + {dirs!r}
        assert {repo!r} not in sys.path
        try:
            import sparkdl
        except ImportError:
            pass
        else:
            raise SystemExit("sparkdl is importable: " + sparkdl.__file__)
    """)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_exported_files_run_without_sparkdl(exported, classifiers, images, tmp_path):
    """Only the exported files (each copied alone) and an input .npy: onnxruntime and torch.jit.load, no sparkdl."""
    import shutil

    classifier = classifiers["efficientnet_lite0"]
    batch = _decoded(classifier, images)
    np.save(tmp_path / "input.npy", batch)
    shutil.copy(exported["efficientnet_lite0", "onnx"].output, tmp_path / "model.onnx")
    shutil.copy(exported["efficientnet_lite0", "torchscript"].output, tmp_path / "model.pt")
    code = textwrap.dedent("""
        import numpy as np, onnxruntime as ort, torch
        x = np.load("input.npy")
        session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
        np.save("onnx.npy", session.run(["probabilities"], {"input": x})[0])
        with torch.no_grad():
            np.save("torchscript.npy", torch.jit.load("model.pt")(torch.from_numpy(x)).numpy())
    """)
    proc = _isolated(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = classifier.probabilities(batch)
    for name in ("onnx", "torchscript"):
        got = np.load(tmp_path / f"{name}.npy")
        print(f"without sparkdl, {name}: max |diff| = {np.abs(got - expected).max():.3g}")
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def _readme_snippet() -> str:
    text = README.read_text()
    section = text[text.index("\n### Export\n"):]
    section = section[: section.index("\n## ")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's Export section should hold one python snippet"
    return blocks[0]


@pytest.mark.parametrize("photo", ["china.jpg", "flower.jpg"])
def test_readme_snippet_runs_without_sparkdl(exported, classifiers, photos, tmp_path, photo):
    """The README's onnxruntime snippet, verbatim, on a real photo: predict's label and probability."""
    import shutil

    result = exported["efficientnet_lite0", "onnx"]
    shutil.copy(result.output, tmp_path / "model.onnx")
    shutil.copy(result.sidecar, tmp_path / "model.onnx.json")
    (tmp_path / "photo.jpg").write_bytes(photos[photo])
    snippet = _readme_snippet()
    assert len(snippet.strip().splitlines()) <= 12
    proc = _isolated(snippet, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    label, probability = proc.stdout.split()
    (expected,) = classifiers["efficientnet_lite0"].predict([photos[photo]])
    assert label == expected.label
    assert abs(float(probability) - expected.probability) < TOL


# -- refusals ----------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text.strip(), text
    return text


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_existing_output_is_refused_without_overwrite(bundles, tmp_path):
    out = tmp_path / "m.onnx"
    export_model(ExportConfig(str(bundles["tiny"]), str(out), "onnx"))
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match="already exists: pass --overwrite") as info:
        export_model(ExportConfig(str(bundles["tiny"]), str(out), "onnx"))
    _one_line(info.value)
    assert _snapshot(tmp_path) == before
    # a sidecar alone is an output too
    lone = tmp_path / "other.pt"
    (tmp_path / "other.pt.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"other\.pt\.json already exists"):
        export_model(ExportConfig(str(bundles["tiny"]), str(lone), "torchscript"))
    assert not lone.exists()


def test_overwrite_replaces_an_earlier_export_only(bundles, tmp_path):
    out = tmp_path / "m.onnx"
    first = export_model(ExportConfig(str(bundles["tiny"]), str(out), "onnx"))
    other = datagen.make_bundle(tmp_path / "other-model", "tiny", seed=7)
    second = export_model(ExportConfig(str(other), str(out), "onnx", overwrite=True))
    assert second.model_sha256 != first.model_sha256
    assert json.loads((tmp_path / "m.onnx.json").read_text())["model_sha256"] == second.model_sha256
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.onnx", "m.onnx.json"]
    # not an earlier export: refused even with --overwrite, and left alone
    (tmp_path / "notes.onnx").write_text("mine")
    with pytest.raises(ConfigError, match="replaces only an earlier export"):
        export_model(ExportConfig(str(bundles["tiny"]), str(tmp_path / "notes.onnx"), "onnx", overwrite=True))
    assert (tmp_path / "notes.onnx").read_text() == "mine" and not (tmp_path / "notes.onnx.json").exists()
    with pytest.raises(ConfigError, match="is a directory"):
        export_model(ExportConfig(str(bundles["tiny"]), str(tmp_path / "other-model"), "onnx", overwrite=True))
    with pytest.raises(ConfigError, match="inside the model bundle"):
        export_model(ExportConfig(str(bundles["tiny"]), str(bundles["tiny"] / "m.onnx"), "onnx"))


def test_a_failed_export_leaves_nothing_and_keeps_the_earlier_one(bundles, tmp_path, monkeypatch):
    import sparkdl.infer.export as export_mod

    out = tmp_path / "m.pt"
    export_model(ExportConfig(str(bundles["tiny"]), str(out), "torchscript"))
    before = _snapshot(tmp_path)
    monkeypatch.setattr(export_mod, "_run_exported", lambda path, fmt, batch: (np.zeros((len(batch), 3), np.float32), "broken"))
    with pytest.raises(DataError, match="disagrees with the model") as info:
        export_model(ExportConfig(str(bundles["tiny"]), str(out), "torchscript", overwrite=True))
    _one_line(info.value)
    assert _snapshot(tmp_path) == before  # no .partial left, the earlier export untouched


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "tflite"}, "unknown export format 'tflite'"),
        ({"format": "onnx", "opset": 9}, "--opset must be an ONNX opset from 13 to 20"),
        ({"format": "onnx", "opset": 21}, "--opset must be"),
        ({"format": "torchscript", "opset": 17}, "--opset applies to --format onnx only"),
        ({"format": "onnx", "output": "hdfs://nn:9000/m.onnx"}, "writes a file on the local disk"),
        ({"format": "onnx", "output": "out/"}, "--output must name the file"),
        ({"format": "onnx", "output": "m.onnx.partial"}, "ends in .partial"),
    ],
)
def test_config_refusals(kwargs, message):
    args = {"model": "model", "output": "m.onnx", **kwargs}
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        ExportConfig(**args)
    _one_line(info.value)


def test_features_only_bundle_is_refused(tmp_path):
    from sparkdl.bundle import ModelBundle
    from sparkdl.config import HeadConfig
    from sparkdl.model import HeadSpec, build_head

    head = build_head(HeadConfig(), 8, 3, seed=0)
    ModelBundle(head=HeadSpec.from_module(HeadConfig(), 8, 3, head), labels=["a", "b", "c"],
                backbone={"name": None, "feature_dim": 8}).save(tmp_path / "model")  # fmt: skip
    with pytest.raises(DataError, match="has no backbone") as info:
        export_model(ExportConfig(str(tmp_path / "model"), str(tmp_path / "m.onnx"), "onnx"))
    _one_line(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_missing_onnx_is_a_one_line_error_naming_the_extra(bundles, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(ConfigError, match=re.escape("pip install 'sparkdl-torch[export]'")) as info:
        export_model(ExportConfig(str(bundles["tiny"]), str(tmp_path / "m.onnx"), "onnx"))
    assert "--format onnx needs the onnx package" in _one_line(info.value)
    assert not list(tmp_path.iterdir())


def test_without_onnxruntime_the_file_is_written_unchecked(bundles, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    said = []
    result = export_model(ExportConfig(str(bundles["tiny"]), str(tmp_path / "m.onnx"), "onnx"), progress=said.append)
    assert result.checked_with is None and result.max_abs_diff is None
    assert json.loads(Path(result.sidecar).read_text())["checked"]["with"] is None
    assert any("onnxruntime is not installed" in line for line in said)


# -- the command line ----------------------------------------------------------------------------------------------


def test_cli_export(bundles, tmp_path, capsys):
    from sparkdl.cli import main

    out = tmp_path / "m.onnx"
    argv = ["export", "--model", str(bundles["tiny"]), "--format", "onnx", "--output", str(out), "--opset", "13"]
    assert main(argv + ["--json", "--quiet"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["output"] == str(out) and payload["opset"] == 13 and payload["labels"] == ["ak47", "american-flag", "backpack"]
    assert payload["max_abs_diff"] < TOL and payload["input_shape"] == ["batch", 3, 32, 32]
    assert json.loads((tmp_path / "m.onnx.json").read_text())["opset"] == 13

    assert main(argv + ["--quiet"]) == 1  # exists: one line on stderr, exit 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("sparkdl export: error: ") and "--overwrite" in captured.err
    assert main(argv + ["--quiet", "--overwrite"]) == 0
    assert "export summary" in capsys.readouterr().out

    with pytest.raises(SystemExit) as info:  # argparse: usage error, exit 2
        main(["export", "--model", str(bundles["tiny"]), "--format", "tflite", "--output", str(out)])
    assert info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_cli_help_describes_every_option(capsys):
    from sparkdl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    export = sub.choices["export"]
    for action in export._actions:
        assert action.help, f"--help says nothing about {action.option_strings}"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--format", "--output", "--opset", "--overwrite", "onnx", "torchscript", "FILE.json"):
        assert flag in text
