/**
 * The HTTP server of real `bun run pipeline` processes: health and
 * readiness that follow a camera going down and coming back (a real RTSP
 * server), reconnects in the metrics, the status API's shape, and the
 * security rules — control needs the bearer token, refused without one
 * configured, request bodies limited, read endpoints closable.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as v from "valibot";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { modelVersion } from "../runtime/inference/onnx-model.ts";
import { ConfigError } from "../runtime/core/errors.ts";
import { httpOptions } from "../runtime/spec/http-options.ts";
import { isJpeg } from "../runtime/media/jpeg.ts";
import { CLIP, scaledModel, TOKEN } from "./lifecycle-support.ts";
import { readLiveRecords, scrape, startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { tempDir } from "./support/paths.ts";
import { parse, parseError, registryWith } from "./support/pipeline.ts";
import { freePort } from "./support/ports.ts";
import { startRtspServer, stopAllRtspServers, type RtspServer } from "./support/rtsp.ts";
import { sleep, until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let dir: Awaited<ReturnType<typeof tempDir>>;
let model: string;
const procs: PipelineProcess[] = [];

beforeAll(async () => {
  dir = await tempDir();
  model = join(dir.path, "tiny.onnx");
  await writeFile(model, scaledModel(1));
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.child.stop()));
  await stopAllRtspServers();
  await dir.remove();
});

/** A tiny detection chain from `url`, written to a file; `http` is extra YAML for the file's `http:` key. */
async function pipelineFile(name: string, url: string, http = ""): Promise<string> {
  const file = join(dir.path, `${name}.yaml`);
  await writeFile(
    file,
    `
name: ${name}
stages:
  - id: cam
    use: ingest
    with: { url: "${url}", width: 64, height: 48, loop: true, reconnectDelay: 0.2, reconnectMaxDelay: 0.5, stallTimeout: 3 }
  - id: prep
    use: resize
    with: { width: 32, height: 32, mode: letterbox }
  - id: detect
    use: infer-onnx
    with: { model: "${model}" }
  - id: nms
    use: nms
  - id: out
    use: sink-jsonl
    with: { path: "${join(dir.path, `${name}.jsonl`)}" }
${http}`,
  );
  return file;
}

async function start(file: string, env: Record<string, string> = {}): Promise<PipelineProcess> {
  const p = await startPipelineProcess(file, [], env);
  procs.push(p);
  return p;
}

const readyz = async (url: string) => {
  const res = await fetch(`${url}/readyz`);
  return { status: res.status, body: (await res.json()) as { ready: boolean; waiting: string[] } };
};

/** Polls /readyz until it says `ready` (the limit only stops a broken run). */
async function untilReady(url: string, ready: boolean, what: string): Promise<void> {
  const end = performance.now() + 30_000;
  while ((await readyz(url)).status !== (ready ? 200 : 503)) {
    if (performance.now() > end) throw new Error(`gave up waiting for ${what}`);
    await sleep(100);
  }
}

/** Enough of /api/status to check its shape. */
const Status = v.object({
  pipeline: v.string(),
  worker: v.string(),
  ready: v.boolean(),
  state: v.picklist(["starting", "running", "stopping"]),
  bus: v.object({ kind: v.string() }),
  load: v.object({ processCpu: v.number(), hostCpu: v.number(), cores: v.number(), gpus: v.nullable(v.array(v.unknown())) }),
  stages: v.array(v.object({ id: v.string(), operator: v.string(), fps: v.number(), received: v.number(), queued: v.number(), load: v.number(), replicas: v.number() })),
  streams: v.array(v.object({ stream: v.string(), connected: v.nullable(v.boolean()), reconnects: v.nullable(v.number()) })),
  models: v.array(v.object({ stage: v.string(), active: v.object({ model: v.string(), version: v.string(), provider: v.string() }), canary: v.null() })),
});

describe("a camera process", () => {
  let rtsp: RtspServer;
  let port: number;
  let proc: PipelineProcess;

  beforeAll(async () => {
    port = await freePort();
    proc = await start(await pipelineFile("door", `rtsp://127.0.0.1:${port}/stream`), { FRAMEWIRE_HTTP_TOKEN: TOKEN });
  });

  test("readiness follows the camera: down, up, lost, back (reconnects counted)", async () => {
    expect((await fetch(`${proc.url}/healthz`)).status).toBe(200);
    await until(() => proc.child.stderr().includes("reconnect #1"), "a failed connection attempt");
    const down = await readyz(proc.url);
    expect(down.status).toBe(503);
    expect(down.body.waiting).toContain("source cam: not connected (no frame yet)");

    rtsp = await startRtspServer(CLIP, { port });
    await untilReady(proc.url, true, "ready once the camera streams");
    const up = await scrape(proc.url);
    expect(up.value("framewire_stream_connected", { stream: "cam" })).toBe(1);

    await rtsp.stop();
    await untilReady(proc.url, false, "not ready when the camera is gone");
    expect((await readyz(proc.url)).body.waiting[0]).toMatch(/^source cam: not connected \(lost after \d+ frames, reconnecting\)$/);
    rtsp = await startRtspServer(CLIP, { port });
    await untilReady(proc.url, true, "ready again after the reconnect");
    const back = await scrape(proc.url);
    expect(back.value("framewire_stream_reconnects_total", { stream: "cam" })).toBeGreaterThanOrEqual(2);
    expect(back.value("framewire_ready")).toBe(1);
  });

  test("/api/status: stages, streams, load, the model and its version", async () => {
    const s = v.parse(Status, await (await fetch(`${proc.url}/api/status`)).json());
    expect(s.pipeline).toBe("door");
    expect(s.stages.map((x) => x.id)).toEqual(["cam", "prep", "detect", "nms", "out"]);
    expect(s.streams[0]).toMatchObject({ stream: "cam", connected: true });
    expect(s.models[0]).toMatchObject({ stage: "detect", active: { model: "tiny.onnx", version: await modelVersion(model), provider: "cpu" } });
  });

  test("the live feed: JPEG previews with their detections, several frames", async () => {
    const res = await fetch(`${proc.url}/api/live`);
    expect(res.headers.get("content-type")).toBe("application/x-framewire-live");
    const records = await readLiveRecords(res.body!, (r) => r.filter((x) => x.header.type === "frame").length >= 3);
    const frames = records.filter((r) => r.header.type === "frame");
    for (const f of frames) {
      expect(isJpeg(f.jpeg)).toBe(true);
      expect(f.header).toMatchObject({ stream: "cam", width: 64, height: 48, jpegWidth: 64, jpegHeight: 48 });
      expect(Array.isArray(f.header.detections)).toBe(true);
    }
    const seqs = frames.map((f) => f.header.seq as number);
    expect(seqs[2]).toBeGreaterThan(seqs[0]);
  });

  test("control requests need the bearer token", async () => {
    const reload = (init: RequestInit = {}) => fetch(`${proc.url}/api/models/detect/reload`, { method: "POST", ...init });
    const anonymous = await reload();
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get("www-authenticate")).toContain("Bearer");
    expect(((await anonymous.json()) as { error: string }).error).toContain("Authorization: Bearer");
    expect((await reload({ headers: { authorization: "Bearer wrong-token-0123456789" } })).status).toBe(401);
    expect((await reload({ headers: { authorization: `Basic ${btoa("a:b")}` } })).status).toBe(400);

    const auth = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" };
    const ok = await reload({ headers: auth, body: "{}" });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ outcome: "unchanged", version: await modelVersion(model) });
    expect((await reload({ headers: auth, body: "x".repeat(70_000) })).status).toBe(413);
    expect((await reload({ headers: auth, body: "{not json" })).status).toBe(400);
    const invalid = await reload({ headers: auth, body: JSON.stringify({ canary: 2 }) });
    expect(invalid.status).toBe(400);
    expect(((await invalid.json()) as { error: string }).error).toMatch(/^invalid body: canary/);
    expect((await fetch(`${proc.url}/api/models/nope/reload`, { method: "POST", headers: auth })).status).toBe(404);
    expect((await fetch(`${proc.url}/api/models/nms/reload`, { method: "POST", headers: auth })).status).toBe(404);
  });

  test("stops cleanly on SIGTERM", async () => {
    expect(await proc.child.stop(10_000)).toBe(0);
    expect(proc.child.stdout()).toContain("framewire: door stopped (SIGTERM)");
  });
});

describe("security settings", () => {
  test("without a token control is refused (403), reads stay public", async () => {
    const p = await start(await pipelineFile("open", CLIP));
    const res = await fetch(`${p.url}/api/models/detect/reload`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: string }).error).toContain("set http.token");
    expect((await fetch(`${p.url}/metrics`)).status).toBe(200);
    expect((await fetch(`${p.url}/api/status`)).status).toBe(200);
    expect(await p.child.stop(10_000)).toBe(0);
  });

  test("publicMetrics: false closes everything but health and readiness", async () => {
    const p = await start(await pipelineFile("closed", CLIP, `http: { port: 1, token: "${TOKEN}", publicMetrics: false }\n`));
    for (const path of ["/metrics", "/api/status", "/api/live"]) expect({ path, status: (await fetch(`${p.url}${path}`)).status }).toEqual({ path, status: 401 });
    expect((await fetch(`${p.url}/healthz`)).status).toBe(200);
    expect([200, 503]).toContain((await fetch(`${p.url}/readyz`)).status);
    const m = await scrape(p.url, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(m.value("framewire_info", { pipeline: "closed" })).toBe(1);
    // The page itself holds no data: it loads, then asks for the token.
    expect((await fetch(`${p.url}/`)).status).toBe(200);
    expect(await p.child.stop(10_000)).toBe(0);
  });
});

describe("the http: key and --http-port", () => {
  const file = (http: string) => `
name: keyed
stages:
  - id: cam
    use: ingest
    with: { url: "${CLIP}" }
  - id: out
    use: sink-log
${http}`;

  test("defaults fill in; the flag overrides the file's port or switches the server on", async () => {
    const spec = parse(file(`http: { port: 9464, token: "${TOKEN}" }`), await registryWith());
    expect(spec.http).toEqual({ port: 9464, host: "127.0.0.1", token: TOKEN, publicMetrics: true, maxBodyBytes: 65536, liveFps: 5, liveWidth: 640 });
    expect(httpOptions(spec.http, "0")).toMatchObject({ port: 0, token: TOKEN });
    expect(httpOptions(undefined, "8080")).toEqual({ port: 8080, host: "127.0.0.1", publicMetrics: true, maxBodyBytes: 65536, liveFps: 5, liveWidth: 640 });
    expect(httpOptions(undefined, undefined)).toBeUndefined();
    expect(() => httpOptions(undefined, "80a")).toThrow(ConfigError);
    expect(() => httpOptions(undefined, "70000")).toThrow("--http-port: expected a port number 0..65535");
  });

  test("mistakes are reported with line and path", async () => {
    const reg = await registryWith();
    expect(parseError(file("http: { port: 9464, tls: true }"), reg).message).toContain("test.yaml:9:21: http.tls: unknown key (allowed: port, host, token, publicMetrics, maxBodyBytes, liveFps, liveWidth)");
    expect(parseError(file('http: { port: 9464, token: "short" }'), reg).message).toContain("http.token: expected a token of at least 16 characters");
    expect(parseError(file("http: { host: 0.0.0.0 }"), reg).message).toContain("http.port: required field is missing");
  });
});
