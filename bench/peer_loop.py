"""The script a user would write instead of a framewire pipeline, for `bun run bench core`.

OpenCV decodes the clip, letterboxes each frame (bilinear, grey 114, as YOLOv5 does),
onnxruntime runs the model with its default CPU settings, and NumPy + OpenCV do the
YOLOv5 decoding and NMS (conf 0.25, IoU 0.45, as the pipeline's nms stage).

    python bench/peer_loop.py CLIP MODEL FRAMES
    python bench/peer_loop.py --time MODEL RUNS THREADS
    python bench/peer_loop.py --letterbox WxH[,WxH...]

Prints one JSON line: frames, seconds (after the model has loaded, as the pipeline's
summary counts), fps, per-step milliseconds (median) and the detections per frame.
With --time: the median ms of RUNS inferences on zeros of the model's input type
(float16 models included) with THREADS intra-op threads, after 3 warm-up runs.
With --letterbox: per source size, the best of 9 means of 50 runs (ms, one OpenCV thread)
of the letterbox to 640 (cv2.resize + cv2.copyMakeBorder) and of the float32 blob after it
(BGR to RGB, HWC to CHW, /255) on a frame of noise.
"""

import json
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort


def letterbox(img, size=640):
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = round((size - nh) / 2 - 0.1), round((size - nw) / 2 - 0.1)
    img = cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return img, r, left, top


def nms(pred, conf=0.25, iou=0.45):
    pred = pred[pred[:, 4] >= conf]
    scores = pred[:, 5:] * pred[:, 4:5]
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    keep = best >= conf
    pred, cls, best = pred[keep], cls[keep], best[keep]
    boxes = np.stack([pred[:, 0] - pred[:, 2] / 2, pred[:, 1] - pred[:, 3] / 2, pred[:, 2], pred[:, 3]], 1)
    idx = cv2.dnn.NMSBoxesBatched(boxes.tolist(), best.tolist(), cls.tolist(), conf, iou) if len(best) else []
    return [(int(cls[i]), float(best[i])) for i in np.array(idx).reshape(-1)]


def time_model(model, runs, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = np.zeros([d if isinstance(d, int) else 1 for d in inp.shape], dtype=dtype)
    for _ in range(3):
        session.run(None, {inp.name: x})
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {inp.name: x})
        ms.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"ms": float(np.median(ms)), "input": inp.type, "threads": threads, "onnxruntime": ort.__version__}))


def time_letterbox(sizes):
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    out = {}
    for size in sizes.split(","):
        w, h = (int(x) for x in size.split("x"))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

        def best(fn):
            means = []
            for _ in range(9):
                t = time.perf_counter()
                for _ in range(50):
                    fn()
                means.append((time.perf_counter() - t) / 50 * 1000)
            return min(means)

        boxed = letterbox(img)[0]
        out[size] = {
            "letterbox": best(lambda: letterbox(img)),
            "blob": best(lambda: np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)[None] / 255.0),
        }
    print(json.dumps({"ms": out, "opencv": cv2.__version__}))


def main():
    if sys.argv[1] == "--letterbox":
        return time_letterbox(sys.argv[2])
    if sys.argv[1] == "--time":
        return time_model(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    clip, model, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    steps = {"decode": [], "letterbox": [], "blob": [], "inference": [], "nms": []}
    detections = 0
    n = 0
    start = time.perf_counter()
    cap = cv2.VideoCapture(clip)
    while n < frames:
        t0 = time.perf_counter()
        ok, img = cap.read()
        if not ok:
            break
        t1 = time.perf_counter()
        boxed, _, _, _ = letterbox(img)
        t2 = time.perf_counter()
        x = np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)[None] / 255.0
        t3 = time.perf_counter()
        out = session.run(None, {name: x})[0]
        t4 = time.perf_counter()
        detections += len(nms(out[0]))
        t5 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("letterbox", t1, t2), ("blob", t2, t3), ("inference", t3, t4), ("nms", t4, t5)):
            steps[k].append((b - a) * 1000)
        n += 1
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "frames": n,
                "seconds": seconds,
                "fps": n / seconds,
                "ms": {k: float(np.median(v)) for k, v in steps.items() if v},
                "detectionsPerFrame": detections / max(n, 1),
                "versions": {"python": sys.version.split()[0], "opencv": cv2.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
            }
        )
    )


if __name__ == "__main__":
    main()
