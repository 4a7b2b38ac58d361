/**
 * Model names that arrive over HTTP (model reload) stay inside models/ or the
 * running model's folder; pipeline files may name any local file.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFile, mkdir, symlink } from "node:fs/promises";
import { join } from "node:path";
import { modelsDir, resolveModel, resolveModelWithin } from "../runtime/platform/paths.ts";
import { modelFile, tempDir } from "./support/paths.ts";

let tmp: Awaited<ReturnType<typeof tempDir>>;
let current: string;
beforeAll(async () => {
  tmp = await tempDir("framewire-sec-paths-");
  current = join(tmp.path, "deploy");
  await mkdir(current);
  await copyFile(modelFile, join(current, "v2.onnx"));
  await copyFile(modelFile, join(tmp.path, "outside.onnx"));
  // A link inside the allowed folder that points out of it.
  await symlink("/etc/passwd", join(current, "escape.onnx"));
});
afterAll(() => tmp?.remove());

describe("model paths from requests", () => {
  const within = (name: string) => resolveModelWithin(name, [modelsDir, current]);

  test("names inside models/ or the running model's folder resolve", () => {
    expect(within("yolov5n.onnx")).toBe(join(modelsDir, "yolov5n.onnx"));
    expect(within(join(current, "v2.onnx"))).toBe(join(current, "v2.onnx"));
    expect(within("v2.onnx")).toBe(join(current, "v2.onnx"));
  });

  test("traversal, absolute paths elsewhere and symlinks out are refused", () => {
    for (const name of ["../../etc/passwd", "/etc/passwd", "../outside.onnx", join(tmp.path, "outside.onnx"), "escape.onnx", "models/../../../etc/passwd", "%2e%2e/etc/passwd", "", "."]) {
      expect(within(name)).toBeUndefined();
    }
  });

  test("a pipeline file may still name a local model by path (the operator's own choice)", () => {
    expect(resolveModel(join(tmp.path, "outside.onnx"))).toBe(join(tmp.path, "outside.onnx"));
  });
});
