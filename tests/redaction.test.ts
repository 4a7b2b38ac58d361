/**
 * Credentials in camera URLs never leave the process: a real `bun run
 * pipeline` with two cameras whose URLs carry `user:s3cretPW@` (one at a
 * dead port, one on the real RTSP server, which ignores credentials and
 * serves anyway, so ffmpeg gets and uses them), the HTTP server on; every
 * output is grepped for the secret: stdout and stderr (ffmpeg's errors
 * included), GET /api/status, /api/streams, /metrics, /readyz, the answers
 * to control requests that name credentialed URLs (bad ones included), the
 * JSONL results. The redacted form `rtsp://***@` is where the URLs are shown.
 * The streams' state file keeps them whole (a restart reconnects from it).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CLIP, TOKEN } from "./lifecycle-support.ts";
import { startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startRtspServer, stopAllRtspServers } from "./support/rtsp.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(120_000);

const SECRET = "s3cretPW";
let dir: Awaited<ReturnType<typeof tempDir>>;
let p: PipelineProcess | undefined;
beforeAll(async () => {
  dir = await tempDir();
});
afterAll(async () => {
  await p?.child.stop();
  await stopAllRtspServers();
  await dir?.remove();
});

async function get(path: string, token = TOKEN): Promise<{ status: number; text: string }> {
  const res = await fetch(`${p!.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, text: await res.text() };
}

async function send(method: string, path: string, body: unknown): Promise<{ status: number; text: string }> {
  const res = await fetch(`${p!.url}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, text: await res.text() };
}

describe("credentials are redacted everywhere", () => {
  test("logs, ffmpeg errors, status, streams, metrics, readiness, control answers and results never show the password", async () => {
    const rtsp = await startRtspServer(CLIP);
    const dead = await freePort();
    const live = rtsp.url.replace("rtsp://", `rtsp://cam:${SECRET}@`);
    const gone = `rtsp://user:${SECRET}@127.0.0.1:${dead}/cam`;
    const out = join(dir.path, "shop.jsonl");
    const state = join(dir.path, "shop.streams.json");
    const pipeline = join(dir.path, "shop.yaml");
    await writeFile(
      pipeline,
      `name: shop\nhttp: { port: 0, token: ${TOKEN} }\nstages:\n  - id: cams\n    use: ingest\n    with:\n      width: 64\n      height: 48\n      state: ${state}\n      streams:\n        - { id: door, url: "${live}", fps: 5 }\n        - { id: back, url: "${gone}", reconnectDelay: 0.2 }\n  - id: out\n    use: sink-jsonl\n    with: { path: ${out}, flushInterval: 0.1 }\n`,
    );
    p = await startPipelineProcess(pipeline);
    const answers: string[] = [];
    const streams = async () => {
      const r = await get("/api/streams");
      answers.push(r.text);
      return JSON.parse(r.text).streams as { id: string; url: string; connected: boolean; frames: number; reconnects: number; lastError?: string }[];
    };
    // The live camera delivers, the dead one has failed to connect a few times (its error recorded).
    const deadline = Date.now() + 60_000;
    for (;;) {
      const list = await streams();
      const door = list.find((s) => s.id === "door");
      const back = list.find((s) => s.id === "back");
      if ((door?.frames ?? 0) >= 5 && (back?.reconnects ?? 0) >= 2 && back?.lastError) break;
      if (Date.now() > deadline) throw new Error(`cameras not there yet: ${JSON.stringify(list)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const list = await streams();
    expect(list.find((s) => s.id === "door")!.url).toBe(rtsp.url.replace("rtsp://", "rtsp://***@"));
    expect(list.find((s) => s.id === "back")!.url).toBe(`rtsp://***@127.0.0.1:${dead}/cam`);

    // Control requests naming credentialed URLs, good and bad: the answers show none of them.
    answers.push((await send("POST", "/api/streams", { id: "side", url: `rtsp://admin:${SECRET}@127.0.0.1:${dead}/side`, reconnectDelay: 0.2 })).text);
    answers.push((await send("POST", "/api/streams", { id: "bad", url: `rtsp://admin:${SECRET}@127.0.0.1:/nope` })).text);
    answers.push((await send("POST", "/api/streams", { id: "side", url: `rtsp://admin:${SECRET}@127.0.0.1:${dead}/again` })).text);
    answers.push((await send("PATCH", "/api/streams/side", { url: `rtsp://admin:${SECRET}@127.0.0.1:${dead}/moved`, fsp: 3 })).text);
    answers.push((await send("PATCH", "/api/streams/side", { url: `rtsp://admin:${SECRET}@127.0.0.1:${dead}/moved` })).text);
    await until(() => p!.child.stderr().includes("/moved"), "the moved camera's first attempt", 30_000);

    for (const path of ["/api/status", "/api/streams", "/metrics", "/readyz"]) {
      const r = await get(path);
      expect(r.status).toBeLessThan(600);
      answers.push(`${path}: ${r.text}`);
    }
    await p.child.stop();
    const logs = p.child.stdout() + p.child.stderr();
    const results = await readFile(out, "utf8");
    // The state file is the one place the URLs are kept whole: a restart reconnects from it
    // (runtime/platform/stream-file.ts), readable by its owner only.
    const stateFile = await readFile(state, "utf8");
    expect(stateFile).toContain(live);
    expect(((await stat(state)).mode & 0o777).toString(8)).toBe("600");

    // The outputs were real: the dead camera's connection errors are in the log, frames in the results.
    expect(logs).toMatch(/back/);
    expect(results.split("\n").filter(Boolean).length).toBeGreaterThanOrEqual(5);
    expect(logs).toContain("rtsp://***@");
    for (const [name, text] of [
      ["stdout + stderr", logs],
      ["HTTP answers", answers.join("\n")],
      ["results", results],
    ] as const) {
      const at = text.indexOf(SECRET);
      expect(at < 0 ? "" : `${name}: ...${text.slice(Math.max(0, at - 200), at + 40)}...`).toBe("");
    }
  });
});
