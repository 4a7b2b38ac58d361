#!/usr/bin/env python3
"""Derives the shipped YOLOv5n variants from models/yolov5n.onnx and records them.

    bash scripts/models/prepare.sh            # venv + this script, the usual way
    python3 scripts/models/prepare.py [--no-eval] [--runs 30]

Writes, relative to the project root:
  models/yolov5n-batch.onnx  the fp32 model with a dynamic batch axis
  models/yolov5n-int8.onnx   static QDQ int8 (per-channel weights), detect head's
                             decode math left in float
  models/MANIFEST.json       hashes, sizes, commands, calibration set, versions,
                             CPU ms/frame and mAP from `bun run eval coco`
  models/SOURCES.md          the variants' rows in the table (rewritten in place)

The model files are a function of the source model, the calibration images and
the onnx / onnxruntime versions (recorded in the manifest): running it twice
gives byte-identical files. Timings and nothing else change from run to run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "models/yolov5n.onnx"
BATCH = "models/yolov5n-batch.onnx"
INT8 = "models/yolov5n-int8.onnx"
MANIFEST = "models/MANIFEST.json"
SOURCES_MD = "models/SOURCES.md"
COCO_IMAGES = "../shared/data/coco128/images"
COCO_LABELS = "../shared/data/coco128/labels"
BENCH_IMAGE = "../shared/data/images/bus.jpg"
SIZE = 640
HEAD = "/model.24/"
BENCH_THREADS = 2
BENCH_ROUNDS = 3

# The quantization recipe, recorded verbatim in the manifest.
CALIB_COUNT = 48
QUANT = {
    "quant_format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "calibrate_method": "Percentile",
    "calib_percentile": 99.999,
    "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process(skip_symbolic_shape=True): onnx shape inference and ORT basic graph optimisation",
    "nodes_to_exclude": f"every node whose name starts with {HEAD} except its Conv nodes",
    "why": "MinMax calibration lost 0.022 mAP50-95 on all 96 coco128 images and 0.034 on the 48 held-out ones; "
    "Percentile 99.999 keeps both losses under 0.02 (docs/models.md has the comparison)",
}
EXTRA_OPTIONS = {"CalibTensorRangeSymmetric": False, "CalibPercentile": QUANT["calib_percentile"]}


def rel(p: Path | str) -> str:
    """A path as written in the manifest: relative to the project root, '/'-separated."""
    return os.path.relpath(Path(p).resolve(), ROOT).replace(os.sep, "/")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log(msg: str) -> None:
    print(f"prepare: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- preprocessing

def letterbox(path: Path, size: int = SIZE) -> np.ndarray:
    """YOLOv5's letterbox: aspect-preserving bilinear resize, centred, grey 114 padding;
    returned as float32 NCHW RGB in 0..1, shape [1, 3, size, size]."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot decode {rel(path)}")
    h, w = bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, left = max(0, round(dh - 0.1)), max(0, round(dw - 0.1))
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = bgr
    rgb = out[:, :, ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


def coco_images() -> list[Path]:
    d = ROOT / COCO_IMAGES
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(files) < CALIB_COUNT:
        raise SystemExit(f"{COCO_IMAGES} has {len(files)} images, calibration needs {CALIB_COUNT}")
    return files


class Calibration(CalibrationDataReader):
    def __init__(self, files: list[Path], input_name: str):
        self.files = list(files)
        self.input_name = input_name
        self.i = 0

    def get_next(self):
        if self.i >= len(self.files):
            return None
        f = self.files[self.i]
        self.i += 1
        return {self.input_name: letterbox(f)}

    def rewind(self):
        self.i = 0


# ---------------------------------------------------------------- variants

def copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    del dst.metadata_props[:]
    for p in src.metadata_props:
        dst.metadata_props.add(key=p.key, value=p.value)


def make_batch(src_path: Path, out_path: Path) -> dict:
    """Dynamic batch: the head's six Reshape targets start with -1 instead of 1, and the
    graph input/output dim 0 becomes the symbol `batch`. Nothing else changes."""
    m = onnx.load(str(src_path))
    g = m.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    changed = []
    for n in g.node:
        if n.op_type != "Reshape" or not n.name.startswith(HEAD):
            continue
        shape_name = n.input[1]
        if shape_name in inits:
            t = inits[shape_name]
            arr = numpy_helper.to_array(t).copy()
            if arr[0] != 1:
                raise SystemExit(f"{n.name}: shape {arr.tolist()} does not start with 1")
            arr[0] = -1
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
        else:
            c = producers.get(shape_name)
            if c is None or c.op_type != "Constant":
                raise SystemExit(f"{n.name}: shape input {shape_name} is neither an initializer nor a Constant")
            attr = next(a for a in c.attribute if a.name == "value")
            arr = numpy_helper.to_array(attr.t).copy()
            if arr[0] != 1:
                raise SystemExit(f"{n.name}: shape {arr.tolist()} does not start with 1")
            arr[0] = -1
            attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
        changed.append(n.name)
    if len(changed) != 6:
        raise SystemExit(f"expected the six {HEAD} Reshape nodes, changed {len(changed)}: {changed}")
    for v in list(g.input) + list(g.output):
        d0 = v.type.tensor_type.shape.dim[0]
        d0.Clear()
        d0.dim_param = "batch"
    # Intermediate shapes recorded with batch 1 would contradict the symbolic input.
    del g.value_info[:]
    onnx.checker.check_model(m)
    onnx.save(m, str(out_path))
    return {"reshape_nodes": changed}


def make_int8(src_path: Path, out_path: Path, calib: list[Path], tmp: Path) -> dict:
    src = onnx.load(str(src_path))
    input_name = src.graph.input[0].name
    pre = tmp / "pre.onnx"
    quant_pre_process(str(src_path), str(pre), skip_symbolic_shape=True)
    pre_model = onnx.load(str(pre))
    exclude = sorted(n.name for n in pre_model.graph.node if n.name.startswith(HEAD) and n.op_type != "Conv")
    quantize_static(
        str(pre),
        str(out_path),
        Calibration(calib, input_name),
        quant_format=QuantFormat.QDQ,
        activation_type=getattr(QuantType, QUANT["activation_type"]),
        weight_type=getattr(QuantType, QUANT["weight_type"]),
        per_channel=QUANT["per_channel"],
        calibrate_method=getattr(CalibrationMethod, QUANT["calibrate_method"]),
        nodes_to_exclude=exclude,
        extra_options=EXTRA_OPTIONS,
    )
    q = onnx.load(str(out_path))
    copy_metadata(src, q)
    onnx.save(q, str(out_path))
    return {"nodes_excluded": len(exclude)}


# ---------------------------------------------------------------- checks and measurements

def session(path: Path, threads: int = BENCH_THREADS) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run1(s: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def verify_batch(src_path: Path, batch_path: Path) -> dict:
    a = letterbox(ROOT / "../shared/data/images/bus.jpg")
    b = letterbox(ROOT / "../shared/data/images/zidane.jpg")
    fp, bt = session(src_path), session(batch_path)
    ra, rb = run1(fp, a), run1(fp, b)
    ba, bb = run1(bt, a), run1(bt, b)
    if ba.shape != (1, 25200, 85):
        raise SystemExit(f"batch model at batch 1 gives {ba.shape}")
    d1 = float(max(np.abs(ra - ba).max(), np.abs(rb - bb).max()))
    if d1 != 0.0:
        raise SystemExit(f"batch model at batch 1 differs from fp32 by {d1}")
    r2 = run1(bt, np.concatenate([a, b]))
    if r2.shape != (2, 25200, 85):
        raise SystemExit(f"batch model at batch 2 gives {r2.shape}")
    d2 = float(max(np.abs(r2[0:1] - ra).max(), np.abs(r2[1:2] - rb).max()))
    if d2 > 1e-3:
        raise SystemExit(f"batch model at batch 2 differs from batch 1 by {d2}")
    return {"batch1_max_abs_diff_vs_fp32": d1, "batch2_max_abs_diff_vs_batch1": d2}


def bench(path: Path, runs: int, batch: int = 1) -> float:
    """ms per frame at `batch`: the median of `runs` timed runs (after 3 warm-up runs), taken
    BENCH_ROUNDS times; the lowest of those medians is reported, so that a burst of other
    work on the machine during one round does not count."""
    s = session(path)
    x = np.concatenate([letterbox(ROOT / BENCH_IMAGE)] * batch)
    name = s.get_inputs()[0].name
    for _ in range(3):
        s.run(None, {name: x})
    medians = []
    for _ in range(BENCH_ROUNDS):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            times.append((time.perf_counter() - t0) * 1000 / batch)
        medians.append(statistics.median(times))
    return round(min(medians), 2)


def bun_eval(model: str, images_dir: str) -> dict:
    """`bun run eval coco` on a directory, as the framework measures it; returns its JSON line."""
    cmd = ["bun", "run", "eval", "coco", "--images", images_dir, "--labels", COCO_LABELS, "--model", model]
    log(" ".join(cmd))
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"eval failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
    r = json.loads(line)
    return {"images": r["images"], "map50": round(r["map50"], 4), "map50_95": round(r["map50_95"], 4)}


def held_out_dir(files: list[Path], tmp: Path) -> str:
    """A directory of symlinks to the images the calibration did not see, as a path
    relative to the project root when possible (the eval prints it)."""
    d = tmp / "held-out"
    d.mkdir()
    for f in files:
        (d / f.name).symlink_to(f.resolve())
    return str(d)


# ---------------------------------------------------------------- records

def describe(path: Path) -> dict:
    return {"file": rel(path), "sha256": sha256(path), "bytes": path.stat().st_size}


SOURCES_ROWS = {
    "yolov5n-batch.onnx": (
        "YOLOv5n fp32 with a dynamic batch axis: input `images` [batch,3,640,640], output `output0` [batch,25200,85]. "
        "Same weights and outputs as yolov5n.onnx (identical at batch 1). Metadata `stride`, `names` kept.",
        "Derived from yolov5n.onnx by scripts/models/prepare.py: the six Reshape shape constants under /model.24/ start with -1 "
        "instead of 1, input/output dim 0 is the symbol `batch`.",
    ),
    "yolov5n-int8.onnx": (
        "YOLOv5n static int8, QDQ format: uint8 activations, per-channel int8 weights, batch 1; the detect head's decode "
        "(everything under /model.24/ but its Conv nodes) stays float. Same input/output as yolov5n.onnx. Metadata kept.",
        "Derived from yolov5n.onnx by scripts/models/prepare.py (onnxruntime.quantization.quantize_static, Percentile "
        "(99.999) calibration on the first 48 images of coco128, sorted); see MANIFEST.json.",
    ),
}


def update_sources_md(shas: dict[str, str]) -> None:
    p = ROOT / SOURCES_MD
    lines = p.read_text().splitlines()
    lines = [ln for ln in lines if not any(ln.startswith(f"| {f} |") for f in SOURCES_ROWS)]
    at = next(i for i, ln in enumerate(lines) if ln.startswith("| yolov5n.onnx |")) + 1
    rows = [f"| {f} | {what} | {src} | {shas[f]} |" for f, (what, src) in SOURCES_ROWS.items()]
    lines[at:at] = rows
    p.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-eval", action="store_true", help="skip `bun run eval coco` (mAP fields are kept from the old manifest when its model hashes match, else null)")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per benchmark (median reported)")
    args = ap.parse_args()

    src = ROOT / SOURCE
    images = coco_images()
    calib = images[:CALIB_COUNT]
    held = images[CALIB_COUNT:]
    old = json.loads((ROOT / MANIFEST).read_text()) if (ROOT / MANIFEST).exists() else {}

    with tempfile.TemporaryDirectory(prefix="framewire-models-") as t:
        tmp = Path(t)
        log(f"{BATCH}: dynamic batch axis")
        batch_info = make_batch(src, ROOT / BATCH)
        batch_info |= verify_batch(src, ROOT / BATCH)
        log(f"{INT8}: static QDQ quantization, calibrating on {len(calib)} images")
        int8_info = make_int8(src, ROOT / INT8, calib, tmp)

        files = {"fp32": src, "batch": ROOT / BATCH, "int8": ROOT / INT8}
        for f in files.values():
            m = onnx.load(str(f))
            props = {p.key: p.value for p in m.metadata_props}
            if set(props) < {"stride", "names"}:
                raise SystemExit(f"{rel(f)} lost its metadata: {sorted(props)}")

        log(f"timing: onnxruntime CPU, intra_op_num_threads={BENCH_THREADS}, median of {args.runs}")
        ms = {k: bench(f, args.runs) for k, f in files.items()}
        batch_ms = {str(b): bench(ROOT / BATCH, args.runs, b) for b in (1, 2, 4)}

        evals: dict[str, dict | None] = {}
        held_dir = held_out_dir(held, tmp)
        for k, f in files.items():
            if args.no_eval:
                prev = next((v for v in old.get("variants", []) + [old.get("source", {})] if v.get("sha256") == sha256(f)), None)
                evals[k] = prev.get("accuracy") if prev else None
            else:
                evals[k] = {
                    "all": bun_eval(rel(f), COCO_IMAGES),
                    "held_out": bun_eval(rel(f), held_dir),
                }

    source = describe(src) | {"ms_per_frame": ms["fp32"], "accuracy": evals["fp32"]}
    src_ref = {"file": source["file"], "sha256": source["sha256"]}
    command = "bash scripts/models/prepare.sh"
    calibration = {
        "dir": COCO_IMAGES,
        "selection": f"the first {CALIB_COUNT} image files, sorted by name",
        "count": len(calib),
        "preprocessing": "letterbox to 640x640 (bilinear, centred, grey 114 padding), BGR->RGB, /255, NCHW float32",
        "files": [{"name": f.name, "sha256": sha256(f)} for f in calib],
    }
    variants = [
        describe(ROOT / BATCH)
        | {
            "kind": "fp32, dynamic batch",
            "source": src_ref,
            "command": command,
            "transform": "the six Reshape shape constants under /model.24/ start with -1 instead of 1; input/output dim 0 = 'batch'",
            "checks": batch_info,
            "ms_per_frame": ms["batch"],
            "ms_per_frame_by_batch": batch_ms,
            "accuracy": evals["batch"],
        },
        describe(ROOT / INT8)
        | {
            "kind": "int8 static QDQ",
            "source": src_ref,
            "command": command,
            "quantization": QUANT | {"nodes_excluded": int8_info["nodes_excluded"], "extra_options": EXTRA_OPTIONS},
            "calibration": calibration,
            "ms_per_frame": ms["int8"],
            "accuracy": evals["int8"],
        },
    ]
    manifest = {
        "about": "Generated by scripts/models/prepare.py (run `bash scripts/models/prepare.sh`); do not edit by hand.",
        "source": source,
        "variants": variants,
        "timing": {
            "what": "onnxruntime CPU execution provider (Python API), ms per frame: median of `runs` runs after 3 warm-up runs, lowest of `rounds` such medians",
            "intra_op_num_threads": BENCH_THREADS,
            "inter_op_num_threads": 1,
            "runs": args.runs,
            "rounds": BENCH_ROUNDS,
            "input": BENCH_IMAGE + " letterboxed to 640",
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "evaluation": {
            "command": f"bun run eval coco --images DIR --labels {COCO_LABELS} --model MODEL",
            "defaults": "conf 0.001, iou 0.6, size 640 (YOLOv5 val.py defaults)",
            "all": f"all {len(images)} images of {COCO_IMAGES}",
            "held_out": f"images {CALIB_COUNT}..{len(images) - 1} (sorted) of {COCO_IMAGES}, which the int8 calibration did not see, via a temporary directory of symlinks",
        },
        "versions": {
            "python": platform.python_version(),
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
    }
    (ROOT / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    update_sources_md({Path(v["file"]).name: v["sha256"] for v in variants})
    log(f"wrote {MANIFEST}")
    print(json.dumps({k: {"ms": ms[k], "accuracy": evals[k]} for k in files} | {"batch_ms_per_frame": batch_ms}, indent=2))


if __name__ == "__main__":
    main()
