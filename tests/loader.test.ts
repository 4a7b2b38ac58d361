import { beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { PipelineFileError } from "../runtime/core/errors.ts";
import { loadPipeline, PipelineSchema } from "../runtime/spec/loader.ts";
import { loadRegistry, type Registry } from "../runtime/spec/registry.ts";
import { repoRoot, sampleVideo } from "./support/paths.ts";
import { lineOf, parse, parseError } from "./support/pipeline.ts";

let registry: Registry;
beforeAll(async () => {
  registry = await loadRegistry();
});

const video = JSON.stringify(sampleVideo);

/** A valid five-stage pipeline; `iou` and `fps` are spliced in verbatim. */
function detectYaml(o: { iou?: string; fps?: string } = {}): string {
  return `name: t
stages:
  - id: cam
    use: ingest
    with:
      url: ${video}
      fps: ${o.fps ?? "5"}
  - id: prep
    use: resize
  - id: detect
    use: infer-onnx
    with: { model: yolov5n.onnx }
  - id: nms
    use: nms
    with:
      iou: ${o.iou ?? "0.45"}
  - id: out
    use: sink-log
`;
}

describe("pipeline files", () => {
  test("pipelines/demo.yaml loads and wires stages in file order", async () => {
    const spec = await loadPipeline(join(repoRoot, "pipelines", "demo.yaml"), registry, () => undefined);
    expect(spec.name).toBe("demo");
    expect(spec.bus).toBe("memory");
    expect(spec.stages.map((s) => s.def.name)).toEqual(["ingest", "resize", "infer-onnx", "nms", "sink-jsonl", "sink-log"]);
    const [cam, prep, detect, nms, results, progress] = spec.stages;
    expect(cam.inputs).toEqual([]);
    expect(prep.inputs).toEqual([cam.output]);
    expect(detect.inputs).toEqual([prep.output]);
    expect(nms.inputs).toEqual([detect.output]);
    // Both sinks hang off the last producing stage.
    expect(results.inputs).toEqual([nms.output]);
    expect(progress.inputs).toEqual([nms.output]);
    expect(cam.options).toMatchObject({ url: "pipelines/media/vtest.mp4" });
    expect(nms.options).toMatchObject({ conf: 0.25, iou: 0.45 });
  });

  test("a valid file gets the operators' defaults", () => {
    const spec = parse(detectYaml(), registry);
    expect(spec.stages[1].options).toEqual({ width: 640, height: 640, mode: "letterbox" });
    expect(spec.stages[2].options).toMatchObject({ model: "yolov5n.onnx", providers: ["cpu"] });
    expect(spec.stages[0].line).toBe(3);
  });

  test("wrong type names file, line and field path", () => {
    const text = detectYaml({ iou: '"high"' });
    const err = parseError(text, registry);
    expect(err.issues).toHaveLength(1);
    expect(err.message).toBe(`test.yaml:${lineOf(text, "iou:")}:12: stages[3].with.iou: expected number, got "high"`);
  });

  test("out-of-range number says the bound", () => {
    const text = detectYaml({ iou: "2" });
    const err = parseError(text, registry);
    expect(err.message).toStartWith(`test.yaml:${lineOf(text, "iou:")}:`);
    expect(err.message).toContain("stages[3].with.iou: expected <= 1, got 2");
  });

  test("unknown key at the top level lists the allowed keys", () => {
    const text = `name: t\ncolour: blue\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n`;
    const err = parseError(text, registry);
    expect(err.issues).toHaveLength(1);
    const allowed = Object.keys(PipelineSchema.entries).join(", ");
    expect(allowed).toStartWith("name, bus, stages");
    expect(err.message).toMatch(/^test\.yaml:2:\d+: colour: unknown key \(allowed: /);
    expect(err.message).toEndWith(`(allowed: ${allowed})`);
  });

  test("unknown key in a stage lists the stage keys", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    retries: 2\n    with: { url: ${video} }\n`;
    const err = parseError(text, registry);
    expect(err.issues[0]).toMatchObject({ line: 5, path: "stages[0].retries" });
    expect(err.message).toMatch(/unknown key \(allowed: id, use, with, in, out, inbox\b/);
  });

  test("unknown key in `with` lists the operator's options", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    with:\n      url: ${video}\n      fsp: 3\n`;
    const err = parseError(text, registry);
    expect(err.issues[0]).toMatchObject({ line: 7, path: "stages[0].with.fsp" });
    expect(err.message).toMatch(/unknown key \(allowed: url, stream, streams, fps, .*stallTimeout/);
  });

  test("an unknown key with a block value is reported on the key's line", () => {
    const text = `name: t\nextra:\n  - 1\nstages:\n  - id: cam\n    use: ingest\n    options:\n      fps: 2\n    with: { url: ${video} }\n`;
    const err = parseError(text, registry);
    const found = err.issues.map((i) => [i.line, i.column, i.path]).sort((a, b) => (a[0] as number) - (b[0] as number));
    expect(found).toEqual([
      [2, 1, "extra"],
      [7, 5, "stages[0].options"],
    ]);
  });

  test("unknown operator suggests the closest name", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingset\n`;
    const err = parseError(text, registry);
    expect(err.issues[0]).toMatchObject({ line: 4, path: "stages[0].use" });
    expect(err.message).toContain('unknown operator "ingset" (did you mean "ingest"?)');
  });

  test("a stateful operator (tracker) refuses replicas and load-aware routes", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: track\n    use: tracker\n    replicas: 2\n    route: least-loaded\n`;
    const err = parseError(text, registry);
    expect(err.issues.map((i) => [i.line, i.path])).toEqual([
      [8, "stages[1].replicas"],
      [9, "stages[1].route"],
    ]);
    expect(err.message).toContain("tracker keeps per-stream state");
  });

  test("duplicate stage id points at the second one", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: cam\n    use: sink-log\n`;
    const err = parseError(text, registry);
    expect(err.message).toBe('test.yaml:6:9: stages[1].id: duplicate stage id "cam"');
  });

  test("missing required field", () => {
    // ingest needs url (one camera) or streams (several): neither is a clear error at `with`.
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    with: { fps: 5 }\n`;
    const err = parseError(text, registry);
    expect(err.issues).toHaveLength(1);
    expect(err.issues[0].path).toBe("stages[0].with");
    expect(err.issues[0].line).toBe(5);
    expect(err.message).toContain("give url (one stream) or streams (several), not both");
    const noUrl = parseError(`name: t\nstages:\n  - id: cam\n    use: ingest\n    with:\n      streams:\n        - { id: door }\n`, registry);
    expect(noUrl.issues[0]).toMatchObject({ line: 7, path: "stages[0].with.streams[0].url" });
    expect(noUrl.message).toContain("required field is missing");
  });

  test("YAML syntax error gives its line", () => {
    const text = `name: t\nstages:\n  - id: cam\n   use: ingest\n`;
    const err = parseError(text, registry);
    expect(err.issues[0].line).toBe(4);
    expect(err.message).toStartWith("test.yaml:4:");
  });

  test("duplicate YAML keys are an error, not a silent override", () => {
    const err = parseError(`name: t\nname: u\nstages: []\n`, registry);
    expect(err.message).toStartWith("test.yaml:2:");
    expect(err.message).toContain("unique");
  });

  test("${VAR} unset without default names the variable and the line", () => {
    const text = detectYaml({ iou: "${IOU}" });
    const err = parseError(text, registry);
    expect(err.issues).toHaveLength(1);
    expect(err.issues[0]).toMatchObject({ line: lineOf(text, "iou:"), path: "stages[3].with.iou" });
    expect(err.message).toContain("environment variable IOU is not set");
  });

  test("${VAR:-default} uses the default when unset or empty, the value when set", () => {
    const text = detectYaml({ iou: "${IOU:-0.3}" });
    expect(parse(text, registry).stages[3].options).toMatchObject({ iou: 0.3 });
    expect(parse(text, registry, { IOU: "" }).stages[3].options).toMatchObject({ iou: 0.3 });
    expect(parse(text, registry, { IOU: "0.6" }).stages[3].options).toMatchObject({ iou: 0.6 });
  });

  test("a whole-scalar placeholder takes the value's type (fps: ${FPS:-5} is a number)", () => {
    const spec = parse(detectYaml({ fps: "${FPS:-5}" }), registry);
    expect(spec.stages[0].options).toMatchObject({ fps: 5 });
    expect(parse(detectYaml({ fps: "${FPS:-5}" }), registry, { FPS: "12.5" }).stages[0].options).toMatchObject({ fps: 12.5 });
  });

  test("placeholders inside text stay strings; $${ escapes", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    with:\n      url: rtsp://\${HOST:-127.0.0.1}:8554/x\n  - id: s\n    use: sink-jsonl\n    with:\n      path: "/tmp/$\${literal}.jsonl"\n`;
    const spec = parse(text, registry);
    expect(spec.stages[0].options).toMatchObject({ url: "rtsp://127.0.0.1:8554/x" });
    expect(spec.stages[1].options).toMatchObject({ path: "/tmp/${literal}.jsonl" });
  });

  test("a variable whose value is not valid YAML stays a string (no crash)", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    with:\n      url: ${video}\n      stream: \${STREAM}\n`;
    // "@cam" cannot start a plain YAML scalar; it must reach the schema as text.
    const err = parseError(text, registry, { STREAM: "@cam" });
    expect(err.issues[0]).toMatchObject({ line: 7, path: "stages[0].with.stream" });
    expect(err.message).toContain('got "@cam"');
    expect(parse(text, registry, { STREAM: "door #2".replace(" #", "-") }).stages[0].options).toMatchObject({ stream: "door-2" });
  });

  test("a value with ' #' is not cut as a YAML comment", () => {
    const text = `name: t\nstages:\n  - id: cam\n    use: ingest\n    with:\n      url: \${URL}\n`;
    const spec = parse(text, registry, { URL: "rtsp://cam/live #1" });
    expect(spec.stages[0].options).toMatchObject({ url: "rtsp://cam/live #1" });
  });

  test("missing model file", () => {
    const text = detectYaml().replace("yolov5n.onnx", "nope.onnx");
    const err = parseError(text, registry);
    expect(err.issues[0]).toMatchObject({ line: lineOf(text, "nope.onnx"), path: "stages[2].with.model" });
    expect(err.message).toContain("model file not found");
  });

  test("missing input file", () => {
    const text = detectYaml().replace(video, "no/such/clip.mp4");
    const err = parseError(text, registry);
    expect(err.issues[0]).toMatchObject({ line: lineOf(text, "clip.mp4"), path: "stages[0].with.url" });
    expect(err.message).toContain("file not found");
  });

  test("several errors are reported at once, each with its own line", () => {
    const text = `name: t
stages:
  - id: cam
    use: ingest
    with: { url: ${video}, fps: fast }
  - id: prep
    use: resize
    with: { mode: squash }
  - id: nms
    use: nms
    with: { iou: 7 }
`;
    const err = parseError(text, registry);
    expect(err).toBeInstanceOf(PipelineFileError);
    expect(err.issues.map((i) => [i.line, i.path])).toEqual([
      [5, "stages[0].with.fps"],
      [8, "stages[1].with.mode"],
      [11, "stages[2].with.iou"],
    ]);
    expect(err.message.split("\n")).toHaveLength(3);
  });

  test("a stage with nothing upstream is an error; so is a pipeline without a source", () => {
    const err = parseError(`name: t\nstages:\n  - id: out\n    use: sink-log\n`, registry);
    expect(err.message).toContain('stage "out" has no input');
    expect(err.message).toContain("no source stage");
  });

  test("explicit in/out subjects are used for wiring", () => {
    const text = `name: t
stages:
  - id: cam
    use: ingest
    with: { url: ${video} }
    out: cams.front
  - id: a
    use: sink-log
    in: cam
  - id: b
    use: sink-log
    in: cams.*
`;
    const spec = parse(text, registry);
    expect(spec.stages[0].output).toBe("cams.front");
    expect(spec.stages[1].inputs).toEqual(["cams.front"]);
    expect(spec.stages[2].inputs).toEqual(["cams.*"]);
  });

  test("not a mapping", () => {
    expect(parseError("", registry).message).toBe("test.yaml:1:1: expected a mapping with name, stages (and optionally bus)");
    expect(parseError("- a\n- b\n", registry).issues[0].line).toBe(1);
  });
});

describe("operators nested in options ({ use, with })", () => {
  let registry: Registry;
  beforeAll(async () => {
    registry = await loadRegistry();
  });

  test("a nested operator's with is checked by that operator's schema, at its own line (browser's server tier)", () => {
    const text = `name: phones
stages:
  - id: phone
    use: browser
    with:
      server:
        use: infer-onnx
        with: { model: no-such-model.onnx, threads: lots }
  - { id: out, use: sink-log }
`;
    const err = parseError(text, registry);
    const got = err.issues.map((i) => `${i.line}:${i.path}`).sort();
    expect(got).toEqual(["8:stages[0].with.server.with.model", "8:stages[0].with.server.with.threads"]);
    expect(err.issues.find((i) => i.path.endsWith(".model"))!.message).toContain("model file not found");
  });

  test("a valid nested configuration passes", () => {
    const text = `name: phones
stages:
  - id: phone
    use: browser
    with:
      server: { use: infer-onnx, with: { model: yolov5n.onnx } }
  - { id: out, use: sink-log }
`;
    expect(parse(text, registry).stages[0].id).toBe("phone");
  });
});
