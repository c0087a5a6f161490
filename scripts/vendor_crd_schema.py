"""Vendor the openAPIV3Schema of one version of a CustomResourceDefinition as JSON, without its `description` fields.

The chart tests validate the custom resources the chart renders (SparkApplication, ServiceMonitor) offline against
these schemas (tests/unit/test_helm.py); tests/data/crd-schemas/README.md says where each one comes from.

    python scripts/vendor_crd_schema.py CRD.yaml VERSION OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def strip_descriptions(node):
    """The schema minus every `description` keyword (a property *named* description is kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
            else:
                out[key] = strip_descriptions(value)
        return out
    if isinstance(node, list):
        return [strip_descriptions(x) for x in node]
    return node


def crd_schema(crd: dict, version: str) -> dict:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strip_descriptions(v["schema"]["openAPIV3Schema"])
    raise SystemExit(f"{crd['metadata']['name']} has no version {version!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("crd", type=Path)
    ap.add_argument("version")
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    crd = yaml.safe_load(args.crd.read_text())
    schema = crd_schema(crd, args.version)
    args.out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{args.out}: {crd['metadata']['name']} {args.version}, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
