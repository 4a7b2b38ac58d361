/**
 * Triton model repositories for tests, written into a temp dir: a
 * config.pbtxt per model, version directories whose model.onnx links to a
 * model file (no 8 MB copies), and any other files (labels, warm-up data).
 * Also the seed's yolov5 config.pbtxt, and reading a server process's
 * threads and memory from /proc.
 */
import { mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { repoRoot } from "./paths.ts";

/** The dynamic-batch YOLOv5n (input [batch, 3, 640, 640]) produced by scripts/models/prepare.sh. */
export const batchModelFile = join(repoRoot, "models", "yolov5n-batch.onnx");

export interface ModelDir {
  /** config.pbtxt's text; none is written when undefined. */
  config?: string;
  /** Version → the model file its model.onnx links to (or a file name other than model.onnx: `{ "1/model.plan": ... }` goes in files). */
  versions?: Record<string, string>;
  /** Other files by path inside the model's directory: text or bytes. */
  files?: Record<string, string | Uint8Array>;
}

/**
 * Writes models into `root`.
 * @example
 * await writeRepository(dir.path, { yolov5: { config: seedConfig(), versions: { "1": batchModelFile } } });
 */
export async function writeRepository(root: string, models: Record<string, ModelDir>): Promise<void> {
  for (const [name, m] of Object.entries(models)) {
    const dir = join(root, name);
    await mkdir(dir, { recursive: true });
    if (m.config !== undefined) await writeFile(join(dir, "config.pbtxt"), m.config);
    for (const [version, file] of Object.entries(m.versions ?? {})) {
      await mkdir(join(dir, version), { recursive: true });
      await symlink(file, join(dir, version, "model.onnx"));
    }
    for (const [path, content] of Object.entries(m.files ?? {})) {
      await mkdir(dirname(join(dir, path)), { recursive: true });
      await writeFile(join(dir, path), content);
    }
  }
}

/**
 * The seed's model_repository/yolov5/config.pbtxt as framewire serves it:
 * ONNX instead of the TensorRT plan, everything else as the seed wrote it
 * (max_batch_size 32, preferred 4/8/16, 500 µs, 4 KIND_GPU instances,
 * labels.txt). `delayUs` replaces the queue delay where a test needs it.
 */
export function seedConfig(delayUs = 500): string {
  return `name: "yolov5"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  {
    name: "images"
    data_type: TYPE_FP32
    dims: [ 3, 640, 640 ]
  }
]
output [
  {
    name: "output0"
    data_type: TYPE_FP32
    dims: [ 25200, 85 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8, 16 ]
  max_queue_delay_microseconds: ${delayUs}
}
instance_group [
  {
    count: 4
    kind: KIND_GPU
  }
]
`;
}

/** Threads and resident memory (bytes) of a process, from /proc/PID/status. */
export async function processUsage(pid: number): Promise<{ threads: number; rss: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? NaN);
  return { threads: field("Threads"), rss: field("VmRSS") * 1024 };
}
