import { fileURLToPath } from "node:url";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** The framewire checkout (holds runtime/, operators/, models/). */
export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
/** Shared sample data next to the checkout (../shared/data). */
export const dataDir = fileURLToPath(new URL("../../../shared/data/", import.meta.url));
export const sharedModelsDir = fileURLToPath(new URL("../../../shared/models/", import.meta.url));

export const sampleVideo = join(dataDir, "video", "vtest.mp4");
export const busImage = join(dataDir, "images", "bus.jpg");
export const zidaneImage = join(dataDir, "images", "zidane.jpg");
export const modelFile = join(repoRoot, "models", "yolov5n.onnx");
export const fp16ModelFile = join(sharedModelsDir, "yolov5n-fp16.onnx");

/** A fresh folder under the OS temp dir, and a function that deletes it. */
export async function tempDir(prefix = "framewire-test-"): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}
