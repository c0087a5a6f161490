"""ModelBundle.load on untrusted bundles: every malformed file is a one-line DataError naming the file and the field,
and the head's sizes are checked against head.safetensors' header before anything is allocated (no Spark)."""
import json
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
import torch

from sparkdl.bundle import ModelBundle
from sparkdl.config import HeadConfig
from sparkdl.errors import DataError
from sparkdl.model import HeadSpec, build_head

DIM, N_CLASSES = 8, 3


def _spec(config: HeadConfig) -> HeadSpec:
    return HeadSpec.from_module(config, DIM, N_CLASSES, build_head(config, DIM, N_CLASSES, seed=0))


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "model"
    bundle = ModelBundle(
        head=_spec(HeadConfig()),
        labels=["cat", "dog", "emu"],
        backbone={"name": "tiny"},
        training={"epochs": 1},
        metrics={"test": {"accuracy": 0.5}},
        events=[{"type": "round", "loss": 1.0}, {"type": "epoch", "epoch": 0}],
    )
    return bundle.save(out)


@pytest.fixture
def bundle_dir(valid, tmp_path):
    return shutil.copytree(valid, tmp_path / "model")


def _edit_config(**changes):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        for key, value in changes.items():
            target, _, leaf = key.rpartition("__")
            node = cfg[target] if target else cfg
            if value is _DELETE:
                del node[leaf]
            else:
                node[leaf] = value
        (d / "config.json").write_text(json.dumps(cfg))

    return edit


_DELETE = object()


def _write(name: str, data: bytes | str):
    def edit(d):
        path = d / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)

    return edit


def _remove(name: str):
    return lambda d: (d / name).unlink()


def _truncate(name: str, keep: int):
    def edit(d):
        raw = (d / name).read_bytes()
        (d / name).write_bytes(raw[:keep])

    return edit


def _append(name: str, extra: bytes):
    def edit(d):
        with open(d / name, "ab") as f:
            f.write(extra)

    return edit


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _tensors(arrays: dict):
    def edit(d):
        from safetensors.numpy import save_file

        save_file(arrays, str(d / "head.safetensors"))

    return edit


_W = np.zeros((N_CLASSES, DIM), np.float32)
_B = np.zeros((N_CLASSES,), np.float32)

CONFIG_CASES = [
    ("not_json", _write("config.json", "{not json"), "not valid JSON"),
    ("not_utf8", _write("config.json", b"\x80\x81\xff"), "not valid JSON"),
    ("deeply_nested", _write("config.json", "[" * 100_000), "not valid JSON"),
    ("not_an_object", _write("config.json", "[1, 2]"), "JSON object"),
    ("too_big", _write("config.json", b"{}" + b" " * (16 * 2**20)), "16 MB"),
    ("no_format", _edit_config(format=_DELETE), "format"),
    ("no_head", _edit_config(head=_DELETE), "'head'"),
    ("head_not_object", _edit_config(head="softmax"), "'head'"),
    ("unknown_kind", _edit_config(head__kind="resnet"), "head.kind"),
    ("kind_not_string", _edit_config(head__kind=["softmax"]), "head.kind"),
    ("no_kind", _edit_config(head__kind=_DELETE), "head.kind"),
    ("hidden_string", _edit_config(head__kind="mlp", head__hidden="abc"), "head.hidden"),
    ("hidden_missing", _edit_config(head__hidden=_DELETE), "head.hidden"),
    ("hidden_item_string", _edit_config(head__kind="mlp", head__hidden=["a"]), "head.hidden[0]"),
    ("hidden_item_zero", _edit_config(head__kind="mlp", head__hidden=[4, 0]), "head.hidden[1]"),
    ("hidden_item_float", _edit_config(head__kind="mlp", head__hidden=[4.5]), "head.hidden[0]"),
    ("hidden_item_bool", _edit_config(head__kind="mlp", head__hidden=[True]), "head.hidden[0]"),
    ("hidden_too_many", _edit_config(head__kind="mlp", head__hidden=[1] * 5000), "head.hidden"),
    ("softmax_with_hidden", _edit_config(head__hidden=[4]), "'head'"),
    ("mlp_without_hidden", _edit_config(head__kind="mlp"), "'head'"),
    ("dropout_string", _edit_config(head__dropout="x"), "head.dropout"),
    ("dropout_out_of_range", _edit_config(head__dropout=1.5), "head.dropout"),
    ("dropout_nan", _write("config.json", json.dumps({"format": "sparkdl.model/1", "feature_dim": DIM, "n_classes": N_CLASSES,
                                                       "labels": ["a", "b", "c"],
                                                       "head": {"kind": "softmax", "hidden": [], "dropout": float("nan")}})),
     "head.dropout"),  # fmt: skip
    ("dropout_missing", _edit_config(head__dropout=_DELETE), "head.dropout"),
    ("feature_dim_float", _edit_config(feature_dim=1.5), "feature_dim"),
    ("feature_dim_string", _edit_config(feature_dim="8"), "feature_dim"),
    ("feature_dim_negative", _edit_config(feature_dim=-1), "feature_dim"),
    ("feature_dim_missing", _edit_config(feature_dim=_DELETE), "feature_dim"),
    ("n_classes_negative", _edit_config(n_classes=-1), "n_classes"),
    ("n_classes_zero", _edit_config(n_classes=0), "n_classes"),
    ("n_classes_bool", _edit_config(n_classes=True), "n_classes"),
    ("n_classes_null", _edit_config(n_classes=None), "n_classes"),
    ("labels_too_few", _edit_config(labels=["cat", "dog"]), "labels"),
    ("labels_too_many", _edit_config(labels=["cat", "dog", "emu", "fox"]), "labels"),
    ("labels_not_list", _edit_config(labels="cat,dog,emu"), "labels"),
    ("labels_missing", _edit_config(labels=_DELETE), "labels"),
    ("label_not_string", _edit_config(labels=["cat", 2, "emu"]), "labels[1]"),
    ("backbone_not_object", _edit_config(backbone="tiny"), "backbone"),
    ("training_not_object", _edit_config(training=[1]), "training"),
]

WEIGHT_CASES = [
    ("missing", _remove("head.safetensors"), "head.safetensors"),
    ("empty", _write("head.safetensors", b""), "truncated"),
    ("short_prefix", _write("head.safetensors", b"\x01\x02"), "truncated"),
    ("truncated_data", _truncate("head.safetensors", -10), "past the end"),
    ("truncated_header", _truncate("head.safetensors", 20), "truncated"),
    ("trailing_garbage", _append("head.safetensors", b"garbage!"), "not a valid safetensors"),
    ("text_file", _write("head.safetensors", "hello, this is not a tensor file at all"), "truncated"),
    ("huge_header_length", _write("head.safetensors", struct.pack("<Q", 2**21) + b" " * (2**21 + 8)), "header"),
    ("header_not_json", _write("head.safetensors", struct.pack("<Q", 5) + b"abcde"), "header"),
    ("header_not_object", _write("head.safetensors", _safetensors([1, 2])), "header"),
    ("entry_not_object", _write("head.safetensors", _safetensors({"0.weight": 3})), "0.weight"),
    ("entry_no_dtype", _write("head.safetensors", _safetensors({"0.weight": {"shape": [3, 8], "data_offsets": [0, 96]}},
                                                                b"\0" * 96)), "0.weight"),  # fmt: skip
    ("entry_bad_shape", _write("head.safetensors", _safetensors({"0.weight": {"dtype": "F32", "shape": [3, -8],
                                                                              "data_offsets": [0, 96]}}, b"\0" * 96)),
     "0.weight"),  # fmt: skip
    ("missing_tensor", _tensors({"0.weight": _W}), "0.bias"),
    ("extra_tensor", _tensors({"0.weight": _W, "0.bias": _B, "1.weight": _W}), "1.weight"),
    ("renamed_tensor", _tensors({"0.weight": _W, "bias": _B}), "0.bias"),
    ("wrong_shape", _tensors({"0.weight": np.zeros((N_CLASSES, DIM + 1), np.float32), "0.bias": _B}), "0.weight"),
    ("transposed", _tensors({"0.weight": _W.T.copy(), "0.bias": _B}), "0.weight"),
    ("float64", _tensors({"0.weight": _W.astype(np.float64), "0.bias": _B}), "0.weight"),
    ("float16", _tensors({"0.weight": _W, "0.bias": _B.astype(np.float16)}), "0.bias"),
    ("int32", _tensors({"0.weight": _W.astype(np.int32), "0.bias": _B}), "0.weight"),
    ("size_vs_shape", _write("head.safetensors", _safetensors({
        "0.weight": {"dtype": "F32", "shape": [3, 8], "data_offsets": [0, 96]},
        "0.bias": {"dtype": "F32", "shape": [3], "data_offsets": [96, 100]}}, b"\0" * 100)), "0.bias"),  # fmt: skip
    ("overlapping_offsets", _write("head.safetensors", _safetensors({
        "0.weight": {"dtype": "F32", "shape": [3, 8], "data_offsets": [0, 96]},
        "0.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}, b"\0" * 108)), "not a valid safetensors"),  # fmt: skip
    ("config_feature_dim_differs", _edit_config(feature_dim=DIM + 1), "0.weight"),
    ("config_n_classes_differs", _edit_config(n_classes=4, labels=["a", "b", "c", "d"]), "0.weight"),
    ("config_says_mlp", _edit_config(head__kind="mlp", head__hidden=[4]), "head.safetensors"),
]

SIDECAR_CASES = [
    ("metrics_not_json", _write("metrics.json", "{'accuracy': 1}"), "metrics.json", "not valid JSON"),
    ("metrics_not_object", _write("metrics.json", "[0.5]"), "metrics.json", "JSON object"),
    ("metrics_truncated", _truncate("metrics.json", 10), "metrics.json", "not valid JSON"),
    ("events_line_not_json", _write("events.jsonl", '{"type": "round"}\n{"type": \n'), "events.jsonl", "line 2"),
    ("events_line_not_object", _write("events.jsonl", '{"type": "round"}\n\n[1, 2]\n'), "events.jsonl", "line 3"),
    ("events_not_utf8", _write("events.jsonl", b'{"type": "round"}\n\xff\xfe\x80\n'), "events.jsonl", "line 2"),
]


def _assert_one_line_data_error(directory, *fragments):
    with pytest.raises(DataError) as info:
        ModelBundle.load(directory)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize("name,corrupt,field", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_malformed_config_json_is_a_data_error_naming_the_field(bundle_dir, name, corrupt, field):
    corrupt(bundle_dir)
    _assert_one_line_data_error(bundle_dir, "config.json", field)


@pytest.mark.parametrize("name,corrupt,field", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_malformed_head_safetensors_is_a_data_error_naming_the_tensor(bundle_dir, name, corrupt, field):
    corrupt(bundle_dir)
    _assert_one_line_data_error(bundle_dir, "head.safetensors", field)


@pytest.mark.parametrize("name,corrupt,file,field", SIDECAR_CASES, ids=[c[0] for c in SIDECAR_CASES])
def test_malformed_metrics_and_events_are_data_errors(bundle_dir, name, corrupt, file, field):
    corrupt(bundle_dir)
    _assert_one_line_data_error(bundle_dir, file, field)


@pytest.fixture
def no_linear(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a head was built (nn.Linear{args}) before its sizes were checked")

    monkeypatch.setattr(torch.nn, "Linear", refuse)


@pytest.mark.parametrize("huge_header", [False, True], ids=["small_weights", "header_claims_the_sizes"])
def test_huge_claimed_head_fails_before_allocating(bundle_dir, no_linear, huge_header):
    """A 1 KB config claiming a 4096 x 200000 layer (3.3 GB) must not allocate it, whatever head.safetensors says."""
    _edit_config(feature_dim=4096, head__kind="mlp", head__hidden=[200000])(bundle_dir)
    if huge_header:  # a header that agrees with config.json, over a file that holds almost nothing
        shapes = {"0.weight": [200000, 4096], "0.bias": [200000], "2.weight": [N_CLASSES, 200000], "2.bias": [N_CLASSES]}
        header, offset = {}, 0
        for key, shape in shapes.items():
            size = 4 * int(np.prod(shape))
            header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        _write("head.safetensors", _safetensors(header, b"\0" * 64))(bundle_dir)
    tracemalloc.start()
    try:
        _assert_one_line_data_error(bundle_dir, "head.safetensors", "2.weight" if not huge_header else "past the end")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_valid_bundles_load(valid, tmp_path):
    bundle = ModelBundle.load(valid)
    assert bundle.labels == ["cat", "dog", "emu"] and bundle.head.in_dim == DIM and bundle.head.n_classes == N_CLASSES
    assert bundle.metrics == {"test": {"accuracy": 0.5}} and len(bundle.events) == 2
    mlp = ModelBundle(head=_spec(HeadConfig("mlp", (5, 4), 0.25)), labels=["a", "b", "c"], extra={"note": "x"})
    again = ModelBundle.load(mlp.save(tmp_path / "mlp"))
    assert again.extra == {"note": "x"} and again.metrics == {} and again.events == []
    for key, value in mlp.head.params.items():
        np.testing.assert_array_equal(again.head.params[key], value)
    again.head.build()


@pytest.mark.parametrize("config", [HeadConfig(), HeadConfig("mlp", (7,)), HeadConfig("mlp", (7, 5, 3), 0.5)], ids=str)
def test_head_shapes_are_the_built_heads_state_dict(config):
    from sparkdl.model import head_shapes

    built = {k: tuple(v.shape) for k, v in build_head(config, DIM, N_CLASSES).state_dict().items()}
    assert head_shapes(config, DIM, N_CLASSES) == built


def test_head_spec_check_shapes_names_the_misfit():
    spec = _spec(HeadConfig("mlp", (4,)))
    spec.check_shapes()
    spec.params["2.weight"] = np.zeros((N_CLASSES, 5), np.float32)
    with pytest.raises(DataError, match=r"stored head: tensor '2.weight' has shape \[3, 5\].*\[3, 4\]"):
        spec.check_shapes(source="stored head")
