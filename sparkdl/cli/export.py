"""``sparkdl export``: a model bundle as one ONNX or TorchScript file + ``FILE.json`` (preprocessing, labels)."""
from __future__ import annotations

import argparse

from sparkdl.cli.options import print_summary
from sparkdl.infer.export import DEFAULT_OPSET, FORMATS, MAX_OPSET, MIN_OPSET  # light: no torch, numpy or Spark


def register(sub, common: argparse.ArgumentParser) -> dict:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a model as one ONNX or TorchScript file (+ FILE.json: preprocessing, labels) for use without sparkdl",
        description="Write the model's whole network after preprocessing (backbone -> head -> softmax) as one file: "
        "input 'input', float32 N x 3 x crop x crop (NCHW, already resized, cropped and normalized); output "
        "'probabilities', float32 N x n_classes; any batch size. Beside it, FILE.json records the preprocessing, the "
        "labels in index order, the input/output names and shapes, the bundle's model_sha256 and backbone (ONNX: "
        "labels and preprocessing are also in metadata_props). The file is run and compared with the model before "
        "it appears; FILE and FILE.json appear complete or not at all.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="the model bundle: a local directory, or a Hadoop URI (hdfs://, s3a://, ...: copied through a "
        "SparkSession, started only for such a URI)",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx: one self-contained .onnx file (run it with onnxruntime); torchscript: a torch.jit archive "
        "(torch.jit.load, no sparkdl needed)",
    )
    p.add_argument("--output", required=True, metavar="FILE", help="the local file to write; its sidecar is FILE.json")
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        metavar="N",
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET}: read by every ONNX Runtime since 1.11); "
        "--format onnx only",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace FILE and FILE.json if they are an earlier export (anything else is refused)",
    )
    return {"export": run_export}


def run_export(args, say) -> dict:
    from sparkdl.cli.options import session
    from sparkdl.data import hadoopfs
    from sparkdl.infer.export import ExportConfig, export_model

    config = ExportConfig(model=args.model, output=args.output, format=args.format, opset=args.opset, overwrite=args.overwrite)
    spark = None if hadoopfs.is_local(config.model) else session(args)
    result = export_model(config, spark=spark, progress=say)
    payload = result.to_json()
    check = "not run (no onnxruntime)"
    if result.checked_with:
        check = f"max |difference| {result.max_abs_diff:.2g} vs the model in torch ({result.checked_with})"
    rows = [
        ("file", f"{result.output} ({result.bytes / 2**20:.1f} MiB, {result.format}"
                 f"{f', opset {result.opset}' if result.opset else ''})"),
        ("sidecar", result.sidecar),
        ("input", f"input float32 {list(result.input_shape)} (preprocessing in the sidecar)"),
        ("output", f"probabilities float32 {list(result.output_shape)}, {len(result.labels)} labels"),
        ("model_sha256", result.model_sha256),
        ("checked", check),
    ]  # fmt: skip
    print_summary("export summary", rows, payload, args.json)
    return payload
