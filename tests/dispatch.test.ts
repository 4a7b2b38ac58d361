import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { rankVariants, type VariantLoad } from "../operators/infer-dispatch.ts";
import { ConfigError } from "../runtime/core/errors.ts";
import type { Frame } from "../runtime/core/message.ts";
import type { TransformInstance } from "../runtime/core/operator.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";
import { busImage, fp16ModelFile, modelFile, sampleVideo, zidaneImage } from "./support/paths.ts";
import { parseError, registryWith } from "./support/pipeline.ts";
import { freePort } from "./support/ports.ts";
import { startServe, type ServeProcess } from "./support/serve.ts";
import { sleep } from "./support/wait.ts";

setDefaultTimeout(90_000);

describe("rankVariants (the routing policy)", () => {
  const idle = (o: Partial<VariantLoad> = {}): VariantLoad => ({ inflight: 0, coolUntil: 0, available: true, ...o });
  const host = { cpu: 0.3, gpu: null };
  const ids = (r: { index: number }[]) => r.map((x) => x.index);

  test("eligible variants keep their order of preference", () => {
    const r = rankVariants([{ maxInflight: 4 }, {}, {}], [idle({ inflight: 3 }), idle(), idle()], host, 1000, 5000);
    expect(ids(r)).toEqual([0, 1, 2]);
    expect(r.every((x) => x.eligible)).toBe(true);
  });

  test("in flight, latency and CPU limits each saturate a variant, with the reason", () => {
    const now = 10_000;
    const r = rankVariants(
      [{ maxInflight: 2 }, { maxLatencyMs: 100 }, { maxCpu: 0.25 }, {}],
      [idle({ inflight: 2 }), idle({ latencyMs: 150, latencyAt: now - 10 }), idle(), idle()],
      host,
      now,
      5000,
    );
    // The eligible one, then the least saturated first: CPU 1.2, then in flight and latency 1.5 each (declared order).
    expect(ids(r)).toEqual([3, 2, 0, 1]);
    expect(r.map((x) => x.why)).toEqual(["", "CPU 30% (max 25%)", "2 in flight (max 2)", "latency 150 ms (max 100)"]);
  });

  test("a stale latency reading does not count, so a slow variant gets probed again", () => {
    const r = rankVariants([{ maxLatencyMs: 100 }, {}], [idle({ latencyMs: 900, latencyAt: 0 }), idle()], host, 6000, 5000);
    expect(ids(r)).toEqual([0, 1]);
  });

  test("GPU limits apply only where a GPU can be read", () => {
    const when = [{ maxGpu: 0.8 }, {}];
    expect(ids(rankVariants(when, [idle(), idle()], { cpu: 0, gpu: 0.95 }, 0, 5000))).toEqual([1, 0]);
    expect(ids(rankVariants(when, [idle(), idle()], { cpu: 0, gpu: null }, 0, 5000))).toEqual([0, 1]);
  });

  test("variants cooling down after a failure come last, soonest back first; unavailable ones not at all", () => {
    const r = rankVariants([{}, {}, {}, {}], [idle({ coolUntil: 900 }), idle({ coolUntil: 300 }), idle({ available: false }), idle({ inflight: 9 })], host, 100, 5000);
    expect(ids(r)).toEqual([3, 1, 0]);
    expect(r[1].why).toBe("failed recently, back in 0.2 s");
  });
});

describe("infer-dispatch", () => {
  let server: ServeProcess;
  let prep: TransformInstance;
  let nms: TransformInstance;
  let frames: Frame[];
  beforeAll(async () => {
    server = await startServe(["--model", modelFile]);
    prep = (await makeTransform("resize", { width: 640, height: 640 })).instance;
    nms = (await makeTransform("nms", {})).instance;
    frames = [...(await readAll({ url: busImage })), ...(await readAll({ url: zidaneImage })), ...(await readAll({ url: sampleVideo, fps: 1 })).slice(0, 2)];
  });
  afterAll(async () => {
    await server?.stop();
  });

  const ready = async (i: number): Promise<Frame> => step(prep, { ...frames[i % frames.length], timings: {}, tensor: undefined, predictions: undefined });
  const variantOf = (f: Frame) => Object.keys(f.timings).find((k) => k.startsWith("detect@"));
  const variants = (url: string) => [
    { id: "remote", use: "infer-triton", with: { url, model: "yolov5n", retries: 0, startTimeout: 0 }, when: { maxInflight: 1 } },
    { id: "local", use: "infer-onnx", with: { model: modelFile } },
  ];

  test("a saturated variant is skipped: concurrent frames spill to the next one, with the same detections", async () => {
    const { instance, log } = await makeTransform("infer-dispatch", { variants: variants(server.url), cooldown: 0.5 }, "detect");
    expect(log.text()).toContain("variants by preference: remote (infer-triton; maxInflight 1) → local (infer-onnx; always)");
    const inputs = await Promise.all([0, 1, 2].map(ready));
    const outs = await Promise.all(inputs.map((f) => step(instance, f)));
    expect(outs.map(variantOf)).toEqual(["detect@remote", "detect@local", "detect@local"]);
    expect(log.text()).toContain("→ local (remote: 1 in flight (max 1))");
    // Alone again, the preferred variant takes the frame.
    expect(variantOf(await step(instance, await ready(3)))).toBe("detect@remote");

    // Whichever variant ran, nms decodes the same objects.
    const local = (await makeTransform("infer-onnx", { model: modelFile })).instance;
    const viaDispatch = (await step(nms, await step(instance, await ready(0)))).detections!;
    const direct = (await step(nms, await step(local, await ready(0)))).detections!;
    expect(viaDispatch.map((d) => d.class)).toEqual(direct.map((d) => d.class));
    const counts = Object.fromEntries(instance.metrics!().filter((m) => m.name === "dispatch_frames_total").map((m) => [m.labels!.variant, "value" in m ? m.value : 0]));
    expect(counts).toEqual({ remote: 3, local: 2 });
    await local.close?.();
    await instance.close?.();
  });

  test("a failing variant falls back within the frame, is skipped for the cooldown, and is used again once it answers", async () => {
    const own = await startServe(["--model", modelFile]);
    const cooldown = 2;
    const { instance, log } = await makeTransform("infer-dispatch", { variants: variants(own.url), cooldown }, "detect");
    try {
      expect(variantOf(await step(instance, await ready(0)))).toBe("detect@remote");
      await own.kill();
      // The frame that meets the dead server still gets detections, from the local variant.
      const f = await step(instance, await ready(1));
      const failedAt = performance.now();
      expect(variantOf(f)).toBe("detect@local");
      expect(f.predictions).toBeDefined();
      expect(log.text()).toMatch(/variant remote failed on \w+#\d+ \(infer yolov5n: .* failed after 1 attempt\(s\): ECONN\w+\); skipping it for 2 s/);
      // Within the cooldown the failed variant is not even tried.
      expect(variantOf(await step(instance, await ready(2)))).toBe("detect@local");
      expect(log.text()).toContain("→ local (remote: failed recently, back in");
      expect(log.text().match(/variant remote failed/g)).toHaveLength(1);

      const back = await startServe(["--model", modelFile], own.port);
      try {
        await sleep(Math.max(0, failedAt + cooldown * 1000 + 100 - performance.now()));
        expect(variantOf(await step(instance, await ready(3)))).toBe("detect@remote");
      } finally {
        await back.stop();
      }
    } finally {
      await instance.close?.();
      await own.stop();
    }
  });

  test("a variant whose server is down at start does not stop the stage: the others run", async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const { instance, log } = await makeTransform("infer-dispatch", { variants: variants(url), cooldown: 60 }, "detect");
    // infer-triton starts without its server (frames fail fast until it answers), so the frame tried there falls back.
    expect(log.text()).toMatch(/\[detect\/remote\] model yolov5n on http:\/\/127\.0\.0\.1:\d+ is not ready \(.*\); the stage runs: frames fail \(counted\) until it answers/);
    expect(variantOf(await step(instance, await ready(0)))).toBe("detect@local");
    await instance.close?.();
  });

  test("variant options are checked against each operator's schema, with their path", async () => {
    const bad = { variants: [{ id: "remote", use: "infer-triton", with: { model: "yolov5n", retries: -1 } }] };
    const err = await makeTransform("infer-dispatch", bad, "detect").then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).toBe("detect: variants[0].with.url: required field is missing; variants[0].with.retries: expected >= 0, got -1");
  });

  test("the float16 model is refused clearly, naming the variant", async () => {
    const o = { variants: [{ id: "local", use: "infer-onnx", with: { model: modelFile } }, { id: "half", use: "infer-onnx", with: { model: fp16ModelFile } }] };
    const err = await makeTransform("infer-dispatch", o, "detect").then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).toStartWith("detect: variant half (infer-onnx): yolov5n-fp16.onnx takes float16 input");
  });

  test("in a pipeline file, an unknown variant operator is an error at its line", async () => {
    const text = `name: d
stages:
  - { id: cam, use: ingest, with: { url: "${busImage}" } }
  - id: detect
    use: infer-dispatch
    with:
      variants:
        - { id: a, use: infer-openvino, with: {} }
`;
    const err = parseError(text, await registryWith());
    expect(err.issues[0]).toMatchObject({ line: 8, path: "stages[1].with.variants[0].use" });
    expect(err.issues[0].message).toContain('"infer-onnx" | "infer-triton"');
  });

  test("validate checks each variant's own options (a missing model file, a wrong type, an unknown key) with file:line", async () => {
    const text = `name: d
stages:
  - { id: cam, use: ingest, with: { url: "${busImage}" } }
  - id: detect
    use: infer-dispatch
    with:
      variants:
        - id: cpu
          use: infer-onnx
          with: { model: yolov5n.onnx }
        - id: light
          use: infer-onnx
          with: { model: yolov5n-320.onnx }
        - id: gpu
          use: infer-triton
          with: { url: "http://127.0.0.1:8000", model: yolov5, retries: many, colour: red }
`;
    const err = parseError(text, await registryWith());
    const got = err.issues.map((i) => ({ line: i.line, path: i.path, message: i.message })).sort((a, b) => a.path.localeCompare(b.path));
    expect(got).toEqual([
      { line: 13, path: "stages[1].with.variants[1].with.model", message: expect.stringContaining("model file not found") },
      { line: 16, path: "stages[1].with.variants[2].with.colour", message: expect.stringContaining("unknown key") },
      { line: 16, path: "stages[1].with.variants[2].with.retries", message: 'expected number, got "many"' },
    ]);
    // The CLI says the same, file:line:column first.
    const { startProcess } = await import("./support/process.ts");
    const { repoRoot, tempDir } = await import("./support/paths.ts");
    const dir = await tempDir("framewire-dispatch-");
    const file = (await import("node:path")).join(dir.path, "d.yaml");
    await Bun.write(file, text);
    const c = startProcess([process.execPath, "runtime/cli.ts", "validate", file], { cwd: repoRoot });
    expect(await c.exited).toBe(2);
    const first = c.stderr().split("\n")[0];
    expect(first).toStartWith(`error: ${file}:13:`);
    expect(first).toContain(": stages[1].with.variants[1].with.model: model file not found");
    await dir.remove();
  });
});
