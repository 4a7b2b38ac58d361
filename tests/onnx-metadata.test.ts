import { describe, expect, test } from "bun:test";
import { loadModel } from "../runtime/inference/onnx-model.ts";
import { ConfigError } from "../runtime/core/errors.ts";
import { parseClassNames, readOnnxMetadata } from "../runtime/inference/onnx-metadata.ts";
import { fp16ModelFile, modelFile } from "./support/paths.ts";
import { makeTransform } from "./support/operators.ts";

describe("ONNX metadata", () => {
  test("yolov5n.onnx carries 80 COCO class names", async () => {
    const meta = readOnnxMetadata(new Uint8Array(await Bun.file(modelFile).arrayBuffer()));
    expect(meta.names).toBeDefined();
    const names = parseClassNames(meta.names)!;
    expect(names).toHaveLength(80);
    expect(names[0]).toBe("person");
    expect(names[5]).toBe("bus");
    expect(names[27]).toBe("tie");
    expect(names[79]).toBe("toothbrush");
  });

  test("class names parse from a Python dict repr or JSON", () => {
    expect(parseClassNames("{0: 'person', 1: \"bicycle\"}")).toEqual(["person", "bicycle"]);
    expect(parseClassNames('["a", "b"]')).toEqual(["a", "b"]);
    expect(parseClassNames('{"1": "b", "0": "a"}')).toEqual(["a", "b"]);
    // A gap keeps its index as the name rather than shifting later classes.
    expect(parseClassNames("{0: 'a', 2: 'c'}")).toEqual(["a", "1", "c"]);
    expect(parseClassNames(undefined)).toBeUndefined();
    expect(parseClassNames("nothing here")).toBeUndefined();
  });

  test("a file that is not protobuf is rejected with a message", () => {
    expect(() => readOnnxMetadata(new TextEncoder().encode("hello world, not a model"))).toThrow("not an ONNX model");
  });

  test("loadModel reads the names and the input shape", async () => {
    const m = await loadModel({ model: modelFile, providers: ["cpu"], threads: 0 });
    try {
      expect(m.classNames).toHaveLength(80);
      expect(m.provider).toBe("cpu");
      expect([...m.inputDims]).toEqual([1, 3, 640, 640]);
    } finally {
      await m.session.release();
    }
  });

  test("an unavailable execution provider falls back to cpu with a warning", async () => {
    const warnings: string[] = [];
    const m = await loadModel({ model: modelFile, providers: ["coreml", "cpu"], threads: 1 }, (w) => warnings.push(w));
    await m.session.release();
    expect(m.provider).toBe("cpu");
    expect(warnings.join("\n")).toContain("coreml");
  });

  test("infer-onnx rejects the float16 model with a clear error", async () => {
    const err = await makeTransform("infer-onnx", { model: fp16ModelFile }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain("yolov5n-fp16.onnx takes float16 input");
    expect((err as Error).message).toContain("float32");
  });
});
