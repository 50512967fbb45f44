#!/usr/bin/env python
"""Build the release archive of the bundle: ``dist/<name>_v<version>.zip``.

The archive holds one folder named after the bundle (MONAI bundle specification, model-zoo layout)::

    <name>/
      LICENSE
      configs/            every config of bundle/configs (metadata.json, inference.json, train.json, ...)
      models/model.pt     the weights (state dict, loaded with weights_only=True)
      models/model.ts     TorchScript export of the same weights (monai.bundle ckpt_export)
      models/model.onnx   only with --onnx
      models/checksums.sha256   SHA-256 of the model files (`cd models && sha256sum -c checksums.sha256`)
      docs/README.md, docs/data_license.txt, and the docs files the README links (transitively)
      plimonai/           the custom code the configs import: `monai.bundle run` started in the bundle
                          folder (or with it on PYTHONPATH) imports this copy, so no repository is needed

Usage::

    python scripts/package_bundle.py                      # weights: bundle/models/model.pt
    python scripts/package_bundle.py --ckpt runs/x/model.pt --out dist
    python scripts/package_bundle.py --onnx --strict      # also model.onnx; fail on broken README links

Exit status 2 (with the reason) when the weights are missing or do not fit ``network_def``, the
version is not in the changelog, a required file is missing, or a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
SCHEMA = ROOT / "scripts" / "schema" / "meta_schema.json"
ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same inputs give the same archive bytes


class PackagingError(RuntimeError):
    """A release cannot be built; the message says why and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def linked_docs(docs: Path, start: str = "README.md") -> tuple[list[str], list[str]]:
    """Files under ``docs`` that ``start`` links to, following links inside linked Markdown files.

    Returns ``(found, missing)``: relative paths (POSIX) of linked files that exist / do not exist.
    Links with a scheme (http:, mailto:) and anchors are ignored, as are links leaving ``docs``.
    """
    link = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
    found, missing, todo, seen = [], [], [start], set()
    root = docs.resolve()
    while todo:
        rel = todo.pop(0)
        if rel in seen:
            continue
        seen.add(rel)
        path = (docs / rel).resolve()
        if root not in path.parents and path != root:
            continue
        if not path.is_file():
            missing.append(rel)
            continue
        found.append(rel)
        if path.suffix.lower() == ".md":
            for target in link.findall(path.read_text(encoding="utf-8")):
                target = target.split("#", 1)[0]
                if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("/"):
                    continue
                sub = (path.parent / target).resolve()
                if root in sub.parents:
                    todo.append(sub.relative_to(root).as_posix())
    return found, missing


def check_weights(ckpt: Path, inference_config: Path) -> tuple[dict, set[str]]:
    """The checkpoint is a plain state dict that loads (weights_only) into the config's ``network_def``.

    Returns the state dict (CPU tensors) and the devices its tensors were stored on (``"cpu"``, ``"cuda:0"``, ...)."""
    import torch
    from monai.bundle import ConfigParser

    locations: set[str] = set()
    try:
        state = torch.load(ckpt, weights_only=True, map_location=lambda storage, loc: locations.add(loc) or storage)
    except Exception as e:
        raise PackagingError(f"{ckpt}: not a loadable weights file ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        raise PackagingError(f"{ckpt}: a training checkpoint (model/optimizer/...), not the weights: "
                             "package the best model (models/model.pt) or extract state['model']")
    parser = ConfigParser()
    parser.read_config(str(inference_config))
    net = parser.get_parsed_content("network_def")
    try:
        net.load_state_dict(state, strict=True)
    except Exception as e:
        raise PackagingError(f"{ckpt}: does not fit network_def of {inference_config.name} "
                             f"(train with the same network_def, or edit it): {e}") from e
    return state, locations


def export_models(stage: Path, onnx: bool) -> None:
    """models/model.ts (and model.onnx) from models/model.pt with MONAI's exporters."""
    from monai.bundle import ckpt_export, onnx_export

    cfg, meta = stage / "configs" / "inference.json", stage / "configs" / "metadata.json"
    common = dict(net_id="network_def", ckpt_file=str(stage / "models" / "model.pt"), meta_file=str(meta),
                  config_file=str(cfg), bundle_root=str(stage))
    ckpt_export(filepath=str(stage / "models" / "model.ts"), **common)
    if onnx:
        onnx_export(filepath=str(stage / "models" / "model.onnx"), use_trace=True,
                    converter_kwargs=ONNX_CONVERTER_KWARGS, **common)


# trace-based (TorchScript) exporter: the dynamo exporter needs onnxscript. Batch, height and width are
# dynamic; the traced graph has no internal padding, so height and width must be multiples of 2**depth.
ONNX_CONVERTER_KWARGS = {
    "dynamo": False,
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
}


def verify_stage(stage: Path) -> None:
    """What the model zoo checks on a submitted bundle, on the staged folder (offline schema)."""
    import importlib.util

    import torch
    from monai.bundle import verify_metadata, verify_net_in_out

    if importlib.util.find_spec("jsonschema") is None:
        raise PackagingError("checking the metadata needs jsonschema (pip install jsonschema); or pass --no-verify")
    meta = stage / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(stage / "configs" / "inference.json"),
                      bundle_root=str(stage), device="cpu")
    torch.jit.load(str(stage / "models" / "model.ts"), map_location="cpu")


def build(ckpt: Path | None = None, out: Path = ROOT / "dist", bundle: Path = BUNDLE, onnx: bool = False,
          strict: bool = False, verify: bool = True, log=print) -> Path:
    """Stage and zip the release; returns the archive path. Raises ``PackagingError``."""
    bundle = Path(bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    name, version = meta.get("name"), meta.get("version")
    if not name or not version:
        raise PackagingError("configs/metadata.json needs 'name' and 'version'")
    if version not in meta.get("changelog", {}):
        raise PackagingError(f"version {version} is not in the changelog of configs/metadata.json: add an entry")
    ckpt = Path(ckpt) if ckpt else bundle / "models" / "model.pt"
    if not ckpt.is_file():
        raise PackagingError(
            f"no weights to release: {ckpt} does not exist. Train the model first "
            "(python -m monai.bundle run training ...: the best model is written to bundle/models/model.pt) "
            "or pass the checkpoint to package with --ckpt PATH")
    for required in (ROOT / "LICENSE", bundle / "docs" / "README.md", bundle / "docs" / "data_license.txt",
                     bundle / "configs" / "inference.json"):
        if not required.is_file():
            raise PackagingError(f"required file missing: {required}")
    state, locations = check_weights(ckpt, bundle / "configs" / "inference.json")

    docs, missing = linked_docs(bundle / "docs")
    if "data_license.txt" not in docs:
        docs.append("data_license.txt")
    for m in missing:
        log(f"WARNING: docs/README.md links docs/{m}, which does not exist: not packaged")
    if missing and strict:
        raise PackagingError(f"broken links in docs/README.md (--strict): {missing}")

    with tempfile.TemporaryDirectory(prefix="plimonai_release_") as tmp:
        stage = Path(tmp) / name
        shutil.copytree(bundle / "configs", stage / "configs",
                        ignore=lambda d, names: [n for n in names if not (n.endswith((".json", ".yaml", ".yml", ".conf")))])
        (stage / "models").mkdir(parents=True)
        # a model.pt written on a GPU holds CUDA tensors, which a CPU-only torch.load(weights_only=True)
        # without map_location cannot open: such a file is re-saved with CPU tensors, any other copied as is
        if locations - {"cpu"}:
            import torch

            log(f"weights stored on {sorted(locations)}: released with CPU tensors")
            torch.save(state, stage / "models" / "model.pt")
        else:
            shutil.copyfile(ckpt, stage / "models" / "model.pt")
        for rel in docs:
            (stage / "docs" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle / "docs" / rel, stage / "docs" / rel)
        shutil.copyfile(ROOT / "LICENSE", stage / "LICENSE")
        shutil.copytree(ROOT / "plimonai", stage / "plimonai",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info"))
        log(f"exporting TorchScript{' and ONNX' if onnx else ''} ...")
        export_models(stage, onnx)
        models = sorted(p.name for p in (stage / "models").iterdir() if p.suffix in (".pt", ".ts", ".onnx"))
        sums = {m: sha256(stage / "models" / m) for m in models}
        (stage / "models" / "checksums.sha256").write_text("".join(f"{h}  {m}\n" for m, h in sums.items()))
        if verify:
            log("verifying the staged bundle (metadata schema, network in/out, TorchScript load) ...")
            try:
                verify_stage(stage)
            except PackagingError:
                raise
            except Exception as e:
                raise PackagingError(f"the staged bundle fails a check: {type(e).__name__}: {e}") from e

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        archive = out / f"{name}_v{version}.zip"
        part = archive.with_suffix(".zip.part")
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for path in sorted(stage.rglob("*")):
                if path.is_file():
                    info = zipfile.ZipInfo(path.relative_to(stage.parent).as_posix(), date_time=ZIP_DATE)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    z.writestr(info, path.read_bytes())
        os.replace(part, archive)
    for m, h in sums.items():
        log(f"sha256 {h}  models/{m}")
    log(f"sha256 {sha256(archive)}  {archive.name}")
    log(f"wrote {archive}")
    return archive


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="weights to release (a state dict fitting network_def); default bundle/models/model.pt")
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    ap.add_argument("--bundle", type=Path, default=BUNDLE, help="bundle folder (default: bundle/)")
    ap.add_argument("--onnx", action="store_true", help="also export models/model.onnx")
    ap.add_argument("--strict", action="store_true", help="fail on README links to missing docs")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the checks on the staged bundle")
    args = ap.parse_args(argv)
    try:
        build(args.ckpt, args.out, args.bundle, onnx=args.onnx, strict=args.strict, verify=args.verify)
    except PackagingError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
