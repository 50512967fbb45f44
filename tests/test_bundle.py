"""Sharing the bundle: metadata against an offline schema, network in/out check, TorchScript and ONNX
export (masks must match the PyTorch path), the TorchScript backend of `run inference`, the release
archive (layout, checksums, runs with no repository, monai.bundle download/load) and the model zoo's
checks on it. Small: a random-init network of the shipped architecture on 256 x 320 slices."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from helpers import make_slice
from plimonai.networks import PLIUNet, load_backend

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "bundle" / "configs"
INFER, META = str(CONFIGS / "inference.json"), str(CONFIGS / "metadata.json")
SCHEMA = ROOT / "scripts" / "schema" / "meta_schema.json"
PACKAGE = ROOT / "scripts" / "package_bundle.py"
METADATA = json.loads(Path(META).read_text())
NAME, VERSION = METADATA["name"], METADATA["version"]
pytestmark = [pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning"),  # our own configs
              pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning")]  # local schema / archive
SHAPE = (256, 320)  # multiples of 16: the ONNX graph (traced without padding) needs them
# the trace-based ONNX exporter (the dynamo one needs onnxscript); batch, height and width dynamic
ONNX_KWARGS = {"dynamo": False, "input_names": ["image"], "output_names": ["pred"],
               "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}}}


def bundle_cli(*args: str, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, cwd=cwd,
                       env=env, timeout=timeout)
    r.log = r.stdout + r.stderr
    return r


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 1.0 if not (a.any() or b.any()) else 2 * (a & b).sum() / (a.sum() + b.sum())


def shipped_net() -> PLIUNet:
    """A fresh (random-init) network of the architecture that inference.json declares."""
    cfg = ConfigParser.load_config_file(INFER)["network_def"]
    return PLIUNet(1, cfg["out_channels"], cfg["channels"])


# ------------------------------------------------------------------ fixtures (module-wide, built once)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundle")


@pytest.fixture(scope="module")
def slices(work) -> Path:
    d = work / "slices"
    d.mkdir()
    for i in range(2):
        img, _ = make_slice(SHAPE, seed=10 + i)
        tifffile.imwrite(d / f"s{i}.tif", img)
    return d


@pytest.fixture(scope="module")
def net_input(slices) -> torch.Tensor:
    """(1, 1, H, W) attenuation of s0, through the inference config's own preprocessing."""
    parser = ConfigParser(ConfigParser.load_config_file(INFER))
    x = parser.get_parsed_content("preprocessing")({"image": str(slices / "s0.tif")})["image"]
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return x.unsqueeze(0).float()


@pytest.fixture(scope="module")
def ckpt(work, net_input) -> Path:
    """Random-init weights of the shipped network_def, the head bias shifted so that about half of the
    sample is tissue (a mask with long boundaries: a strict test of numerical agreement)."""
    torch.manual_seed(0)
    net = shipped_net().eval()
    with torch.no_grad():
        out = net(net_input)
        net.head.bias[1] -= (out[:, 1] - out[:, 0]).median()
    path = work / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


def eager(ckpt: Path) -> torch.nn.Module:
    net = shipped_net()
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    return net.eval()


@pytest.fixture(scope="module")
def ts_model(work, ckpt) -> Path:
    """model.ts through the documented command."""
    ts = work / "model.ts"
    r = bundle_cli("ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(ckpt), "--meta_file", META,
                   "--config_file", INFER)
    assert r.returncode == 0 and ts.is_file(), r.log[-3000:]
    return ts


@pytest.fixture(scope="module")
def onnx_model(work, ckpt) -> Path:
    """model.onnx through the documented command."""
    pytest.importorskip("onnx")
    path = work / "model.onnx"
    r = bundle_cli("onnx_export", "network_def", "--filepath", str(path), "--ckpt_file", str(ckpt), "--meta_file", META,
                   "--config_file", INFER, "--use_trace", "True", "--converter_kwargs", repr(ONNX_KWARGS))
    assert r.returncode == 0 and path.is_file(), r.log[-3000:]
    return path


def needs_jsonschema():
    pytest.importorskip("jsonschema", reason="monai.bundle.verify_metadata needs jsonschema")


# ------------------------------------------------------------------ metadata


def test_metadata_verifies_offline_against_local_schema():
    needs_jsonschema()
    md5 = hashlib.md5(SCHEMA.read_bytes()).hexdigest()
    r = bundle_cli("verify_metadata", "--meta_file", META, "--filepath", str(SCHEMA), "--hash_val", md5)
    assert r.returncode == 0, r.log[-3000:]
    assert "skipped downloading" in r.log and "metadata is verified with no error" in r.log


@pytest.mark.parametrize("breakage", ["no_network_data_format", "bad_dtype", "bad_range", "no_changelog",
                                      "bad_channel_def", "bad_version"])
def test_schema_rejects_broken_metadata(tmp_path, breakage):
    needs_jsonschema()
    from monai.bundle import verify_metadata

    meta = copy.deepcopy(METADATA)
    image = meta["network_data_format"]["inputs"]["image"]
    if breakage == "no_network_data_format":
        del meta["network_data_format"]
    elif breakage == "bad_dtype":
        image["dtype"] = "float"
    elif breakage == "bad_range":
        image["value_range"] = [0]
    elif breakage == "no_changelog":
        del meta["changelog"]
    elif breakage == "bad_channel_def":
        image["channel_def"] = {"first": "attenuation"}
    else:
        meta["version"] = "one"
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


def test_metadata_matches_configs():
    from monai.bundle.scripts import _get_fake_spatial_shape

    m = METADATA
    assert m["version"] in m["changelog"]
    assert "required_packages_version" in m and "optional_packages_version" not in m
    assert "plimonai" not in m["required_packages_version"]  # shipped inside the bundle, not on PyPI
    assert "mean_dice" in m["eval_metrics"]
    assert any("U-Net" in r for r in m["references"]) and any("Axer" in r for r in m["references"])
    inf = ConfigParser.load_config_file(INFER)
    image, pred = m["network_data_format"]["inputs"]["image"], m["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == inf["in_channels"] == 1 and image["dtype"] == "float32"
    assert image["value_range"] == [-0.5, 1.0] and pred["value_range"] == []
    assert pred["num_channels"] == inf["network_def"]["out_channels"] == len(pred["channel_def"]) == 2
    assert pred["format"] == "labels"  # 2-channel logits, argmax is the label
    # "16*n": sizes the network takes without internal padding; the inferer's windows are such sizes
    multiple = 2 ** (len(inf["network_def"]["channels"]) - 1)
    assert _get_fake_spatial_shape(image["spatial_shape"], n=1) == (multiple, multiple)
    n = inf["roi_size"][0] // multiple
    assert _get_fake_spatial_shape(image["spatial_shape"], n=n) == tuple(inf["roi_size"])


def test_verify_net_in_out_realistic_small_size():
    # --n 4: 64 x 64 inputs (the metadata says 16*n; inference windows are n = 64)
    r = bundle_cli("verify_net_in_out", "network_def", "--meta_file", META, "--config_file", INFER,
                   "--n", "4", "--device", "cpu")
    assert r.returncode == 0, r.log[-3000:]
    assert "data shape of network is verified with no error" in r.log


# ------------------------------------------------------------------ export


def test_network_scripts_and_keeps_padding():
    torch.manual_seed(0)
    net = PLIUNet(1, 2, (4, 8, 16)).eval()
    scripted = torch.jit.script(net)
    for hw in [(64, 64), (37, 50), (1, 5)]:  # odd sizes: the scripted model pads and crops like eager
        x = torch.rand(1, 1, *hw)
        with torch.no_grad():
            assert torch.allclose(scripted(x), net(x), atol=1e-6), hw


def test_torchscript_export_gives_the_pytorch_masks(ts_model, ckpt, net_input):
    with torch.no_grad():
        ref = eager(ckpt)(net_input)
        ts = torch.jit.load(str(ts_model))
        out = ts(net_input)
        odd = ts(net_input[..., :250, :301])  # TorchScript keeps the internal padding: any size works
    assert 0.2 < ref.argmax(1).float().mean() < 0.8  # a real two-class mask, not a constant one
    assert out.shape == ref.shape and odd.shape[-2:] == (250, 301)
    assert dice(out.argmax(1), ref.argmax(1)) >= 0.999
    assert torch.allclose(out, ref, atol=1e-3)


def test_onnx_export_gives_the_pytorch_masks(onnx_model, ckpt, net_input):
    ort = pytest.importorskip("onnxruntime")
    with torch.no_grad():
        ref = eager(ckpt)(net_input)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(onnx_model), opts, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(["pred"], {"image": net_input.numpy()})[0])
    assert out.shape == ref.shape
    assert dice(out.argmax(1), ref.argmax(1)) >= 0.999
    assert torch.allclose(out, ref, atol=1e-3)
    # dynamic batch, height and width (multiples of 16)
    two = torch.cat([net_input[..., :128, :160], net_input[..., 128:, 160:]])
    assert sess.run(["pred"], {"image": two.numpy()})[0].shape == (2, 2, 128, 160)


def _run_inference(slices: Path, out: Path, **overrides) -> dict:
    wf = ConfigWorkflow(config_file=INFER, meta_file=META, workflow_type="inference", bundle_root=str(ROOT / "bundle"),
                        dataset_dir=str(slices), output_dir=str(out), roi_size=list(SHAPE), num_workers=0,
                        min_component_area=20, max_hole_area=20, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return {p.stem: tifffile.imread(p) for p in sorted(out.glob("*_mask.tif"))}


def test_torchscript_backend_of_inference_config(ts_model, ckpt, slices, work):
    ref = _run_inference(slices, work / "out_eager", ckpt_path=str(ckpt))  # eager, conv+BN folded
    # torchscript: weights come from model.ts; a ckpt_path that does not exist shows the loader is off
    ts = _run_inference(slices, work / "out_ts", network_backend="torchscript", ts_path=str(ts_model),
                        ckpt_path=str(work / "absent.pt"))
    assert sorted(ref) == sorted(ts) == ["s0_mask", "s1_mask"]
    for k in ref:
        assert ref[k].any() and dice(ts[k], ref[k]) >= 0.999, k
    # evaluate.json has the same switch: the exported model can be evaluated, without a checkpoint load
    parser = ConfigParser(ConfigParser.load_config_file(str(CONFIGS / "evaluate.json")))
    parser.update({"network_backend": "torchscript", "ts_path": str(ts_model), "ckpt_path": "absent.pt",
                   "output_dir": str(work / "eval_ts")})
    assert isinstance(parser.get_parsed_content("network"), torch.jit.ScriptModule)
    assert not any(type(h).__name__ == "CheckpointLoader" for h in parser.get_parsed_content("handlers"))


def test_backend_choices(tmp_path):
    net = PLIUNet(1, 2, (4, 8))
    assert load_backend("eager", net, None, "cpu") is net
    with pytest.raises(ValueError, match="unknown"):
        load_backend("tensorrt!", net, None, "cpu")
    with pytest.raises(FileNotFoundError, match="ckpt_export"):
        load_backend("torchscript", None, str(tmp_path / "none.ts"), "cpu")
    inf = ConfigParser.load_config_file(INFER)
    assert inf["network_backend"] == "auto"  # the fastest installed backend by default


def test_onnxruntime_backend_of_inference_config(ckpt, slices, work):
    pytest.importorskip("onnxruntime")
    ref = _run_inference(slices, work / "out_eager2", ckpt_path=str(ckpt), network_backend="eager")
    ort = _run_inference(slices, work / "out_ort", ckpt_path=str(ckpt), network_backend="onnxruntime")
    auto = _run_inference(slices, work / "out_auto", ckpt_path=str(ckpt))  # auto: onnxruntime on CPU
    assert sorted(ref) == sorted(ort) == sorted(auto) == ["s0_mask", "s1_mask"]
    for k in ref:
        assert ref[k].any() and dice(ort[k], ref[k]) >= 0.999 and dice(auto[k], ref[k]) >= 0.999, k
    # the checkpoint really reached the ONNX session: a random-init network gives other masks
    rand = _run_inference(slices, work / "out_ort_rand", ckpt_path="", network_backend="onnxruntime")
    assert any(dice(rand[k], ref[k]) < 0.99 for k in ref)


# ------------------------------------------------------------------ release archive


@pytest.fixture(scope="module")
def release(work, ckpt) -> dict:
    needs_jsonschema()  # the packaging script checks the metadata before zipping
    out = work / "dist"
    r = subprocess.run([sys.executable, str(PACKAGE), "--ckpt", str(ckpt), "--out", str(out)],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    archive = out / f"{NAME}_v{VERSION}.zip"
    assert archive.is_file(), r.stdout
    unzipped = work / "unzipped"
    with zipfile.ZipFile(archive) as z:
        z.extractall(unzipped)
    return {"zip": archive, "root": unzipped / NAME, "log": r.stdout + r.stderr}


def test_release_layout_and_checksums(release, ckpt):
    root = release["root"]
    with zipfile.ZipFile(release["zip"]) as z:
        names = z.namelist()
    assert all(n.startswith(NAME + "/") for n in names)  # one folder named after the bundle
    for rel in ["LICENSE", "configs/metadata.json", "configs/inference.json", "configs/train.json",
                "configs/evaluate.json", "configs/logging.conf", "models/model.pt", "models/model.ts",
                "models/checksums.sha256", "docs/README.md", "docs/data_license.txt", "plimonai/__init__.py",
                "plimonai/networks/unet.py", "plimonai/networks/backends.py"]:
        assert (root / rel).is_file(), rel
    assert not any("__pycache__" in n or n.endswith(".pyc") or "/scripts/" in n or "/tests/" in n for n in names)
    # docs the README links (and what those link) come along
    assert (root / "docs" / "synthetic_data.md").is_file() and (root / "docs" / "synthetic_lap_example.png").is_file()
    sums = dict(reversed(line.split("  ")) for line in (root / "models" / "checksums.sha256").read_text().splitlines())
    assert set(sums) >= {"model.pt", "model.ts"}
    for f, h in sums.items():
        assert hashlib.sha256((root / "models" / f).read_bytes()).hexdigest() == h, f
    assert sums["model.pt"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert f"sha256 {sums['model.pt']}  models/model.pt" in release["log"]


def test_release_needs_weights(tmp_path):
    r = subprocess.run([sys.executable, str(PACKAGE), "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no weights to release" in r.stderr and "--ckpt" in r.stderr
    assert not list(tmp_path.glob("*.zip"))


def test_release_rejects_weights_of_another_network(tmp_path):
    wrong = tmp_path / "small.pt"
    torch.save(PLIUNet(1, 2, (4, 8)).state_dict(), wrong)
    r = subprocess.run([sys.executable, str(PACKAGE), "--ckpt", str(wrong), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not fit network_def" in r.stderr
    assert not list(tmp_path.glob("*.zip"))


def test_release_runs_without_the_repository(release, slices, tmp_path):
    """`run inference` from the unzipped folder: cwd and PYTHONPATH outside the repository; the probe
    shows `plimonai` is the bundle's copy and nothing was imported from the repository's sources."""
    root = release["root"]
    repo_sources = [str(ROOT / d) for d in ("plimonai", "tests", "scripts")]
    probe = root / "configs" / "probe.json"  # an extra config, only in this unzipped copy
    probe.write_text(json.dumps({
        "+imports": ["$import sys"],
        "+run": ["$print('PROBE plimonai=' + plimonai.__file__)",
                 "$print('PROBE repo=' + ','.join(sorted(n for n, m in list(sys.modules.items()) "
                 f"if str(getattr(m, '__file__', None) or '').startswith(tuple({repo_sources!r})))))"]}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "out"
    r = bundle_cli("run", "inference", "--config_file", "['configs/inference.json','configs/probe.json']",
                   "--meta_file", "configs/metadata.json", "--bundle_root", ".", "--dataset_dir", str(slices),
                   "--output_dir", str(out), "--roi_size", str(list(SHAPE)), "--num_workers", "0", cwd=root, env=env)
    assert r.returncode == 0, r.log[-3000:]
    assert "2 slices done, 0 failed" in r.log
    lines = dict(line.split(" ", 1)[1].split("=", 1) for line in r.stdout.splitlines() if line.startswith("PROBE "))
    assert Path(lines["plimonai"]).resolve() == (root / "plimonai" / "__init__.py").resolve()
    assert lines["repo"] == ""
    assert sorted(p.name for p in out.glob("*_mask.tif")) == ["s0_mask.tif", "s1_mask.tif"]


def test_monai_download_and_load_from_archive(release, ckpt, tmp_path):
    from monai.bundle import download, load

    # download: by URL, and file:// URLs work, so a local archive is "downloaded" and extracted
    download(name=NAME, url=release["zip"].resolve().as_uri(), bundle_dir=str(tmp_path), progress=False)
    assert (tmp_path / NAME / "models" / "model.pt").is_file()
    # load: the weights into the bundle's own network_def (from configs/inference.json) ...
    net = load(name=NAME, bundle_dir=str(tmp_path), workflow_type="inference", device="cpu")
    expected = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    # ... or into a given model (no config parsed), or the TorchScript module with its metadata
    net2 = load(name=NAME, bundle_dir=str(tmp_path), model=shipped_net(), device="cpu")
    assert torch.equal(net2.head.weight, expected["head.weight"])
    ts, meta, extra = load(name=NAME, bundle_dir=str(tmp_path), load_ts_module=True, device="cpu",
                           config_files=("inference.json",))
    assert meta["version"] == VERSION and "inference.json" in extra
    # a bundle folder that already holds the files is used as is (no download): the unzipped release
    net3 = load(name=NAME, bundle_dir=str(release["root"].parent), model=shipped_net())
    assert torch.equal(net3.head.bias, expected["head.bias"])


def test_model_zoo_checks_on_release(release, tmp_path):
    """What the zoo's CI checks on a submitted bundle (full mode), with MONAI's API, on the archive."""
    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out
    from monai.data import load_net_with_metadata

    root = release["root"]
    # directory: required and preferred files
    for rel in ["LICENSE", "configs/metadata.json", "models/model.pt", "docs/README.md", "configs/inference.json",
                "docs/data_license.txt"]:
        assert (root / rel).is_file(), rel
    meta_file, cfg = str(root / "configs" / "metadata.json"), str(root / "configs" / "inference.json")
    meta = json.loads(Path(meta_file).read_text())
    # version listed in the changelog
    assert meta["version"] in meta["changelog"]
    # metadata valid against the schema
    verify_metadata(meta_file=meta_file, filepath=str(SCHEMA))
    # network input/output as the metadata says (zoo defaults: n = p = 1)
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=cfg, bundle_root=str(root), device="cpu")
    # TorchScript: the weights export, and the shipped model.ts loads, with the bundle's metadata
    verify_ts = tmp_path / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(verify_ts), ckpt_file=str(root / "models" / "model.pt"),
                meta_file=meta_file, config_file=cfg, bundle_root=str(root))
    for ts_file in (verify_ts, root / "models" / "model.ts"):
        ts, ts_meta, _ = load_net_with_metadata(str(ts_file), map_location="cpu")
        assert ts_meta["version"] == meta["version"] and ts_meta["name"] == NAME
        with torch.no_grad():
            assert ts(torch.rand(1, 1, 32, 48)).shape == (1, 2, 32, 48)
