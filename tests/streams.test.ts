/**
 * Many cameras in one ingest stage, changed while the pipeline runs: real
 * pipeline processes, a real RTSP server, nats-server with JetStream (KV).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as v from "valibot";
import { startJetStreamServer } from "./support/jetstream.ts";
import { CLIP, TOKEN } from "./lifecycle-support.ts";
import { startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess } from "./support/process.ts";
import { startRtspServer, stopAllRtspServers } from "./support/rtsp.ts";
import { until } from "./support/wait.ts";
type NatsServer = Awaited<ReturnType<typeof startJetStreamServer>>;

setDefaultTimeout(120_000);

let dir: Awaited<ReturnType<typeof tempDir>>;
const procs: PipelineProcess[] = [];
const servers: NatsServer[] = [];
beforeAll(async () => {
  dir = await tempDir();
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.child.stop()));
  await Promise.all(servers.map((s) => s.dispose()));
  await stopAllRtspServers();
  await dir.remove();
});

const Info = v.looseObject({ id: v.string(), stage: v.string(), url: v.string(), connected: v.boolean(), frames: v.number(), fps: v.number(), drops: v.number(), reconnects: v.number() });
const List = v.object({ streams: v.array(Info) });

/** A camera-like file: realtime, looped, small frames (the sink does no work: nothing is dropped). */
const file = (id: string) => `{ id: ${id}, url: "${CLIP}", realtime: true, loop: true, fps: 5 }`;

async function api(p: PipelineProcess, method: string, path: string, body?: unknown, token = TOKEN): Promise<{ status: number; json: any }> {
  const res = await fetch(`${p.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, json: await res.json() };
}

async function streams(p: PipelineProcess) {
  return v.parse(List, (await api(p, "GET", "/api/streams")).json).streams;
}

/** Each stream's sequence numbers in a JSONL result file. */
async function seqs(path: string): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const line of (await readFile(path, "utf8")).trim().split("\n")) {
    const r = JSON.parse(line);
    if (!r.detections) continue;
    if (!out.has(r.stream)) out.set(r.stream, []);
    out.get(r.stream)!.push(r.seq);
  }
  return out;
}

const contiguous = (s: number[]) => s.every((x, i) => x === i);

describe("streams on the memory bus (HTTP API, state file)", () => {
  test("4 cameras in one stage; a 5th added, one removed, a dead one holds nobody back; the set survives a restart", async () => {
    const rtspPort = await freePort();
    const rtsp = await startRtspServer(CLIP, { port: rtspPort });
    const out = join(dir.path, "shop.jsonl");
    const state = join(dir.path, "shop.streams.json");
    const pipeline = join(dir.path, "shop.yaml");
    await writeFile(
      pipeline,
      `name: shop\nhttp: { port: 0, token: ${TOKEN} }\nstages:\n  - id: cams\n    use: ingest\n    with:\n      width: 64\n      height: 48\n      state: ${state}\n      streams:\n        - { id: door, url: "${rtsp.url}", fps: 5 }\n        - ${file("aisle")}\n        - ${file("till")}\n        - ${file("back")}\n  - id: out\n    use: sink-jsonl\n    with: { path: ${out}, flushInterval: 0.1 }\n`,
    );
    let p = await startPipelineProcess(pipeline);
    procs.push(p);
    const enough = async (ids: string[], n: number) => {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const list = await streams(p);
        if (ids.every((id) => (list.find((s) => s.id === id)?.frames ?? 0) >= n)) return list;
        if (Date.now() > deadline) throw new Error(`streams did not reach ${n} frames: ${JSON.stringify(list)}`);
        await Bun.sleep(200);
      }
    };
    await enough(["door", "aisle", "till", "back"], 5);

    // Control needs the token; bad input names the field; a duplicate id is a conflict.
    expect((await api(p, "POST", "/api/streams", { id: "x", url: CLIP }, "wrong-token-0123456789")).status).toBe(401);
    const bad = await api(p, "POST", "/api/streams", { id: "e", url: CLIP, fsp: 3 });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toContain("fsp");
    const noUrl = await api(p, "POST", "/api/streams", { id: "e" });
    expect(noUrl.status).toBe(400);
    expect(noUrl.json.error).toContain("url");
    expect((await api(p, "POST", "/api/streams", { id: "door", url: CLIP })).status).toBe(409);

    const added = await api(p, "POST", "/api/streams", { id: "entrance", url: CLIP, realtime: true, loop: true, fps: 5 });
    expect(added.status).toBe(201);
    expect(added.json).toMatchObject({ id: "entrance", stage: "cams" });
    // A camera that never answers: retried with backoff, shown, and nobody waits for it.
    const dead = await api(p, "POST", "/api/streams", { id: "dead", url: `rtsp://127.0.0.1:${await freePort()}/none`, reconnectDelay: 0.2 });
    expect(dead.status).toBe(201);
    expect((await api(p, "PATCH", "/api/streams/till", { fps: 4 })).status).toBe(200);
    expect((await api(p, "DELETE", "/api/streams/back")).status).toBe(200);
    expect((await api(p, "DELETE", "/api/streams/back")).status).toBe(404);

    const before = await streams(p);
    await enough(["door", "aisle", "till", "entrance"], Math.max(...before.map((s) => s.frames)) + 10);
    const list = await streams(p);
    expect(list.map((s) => s.id).sort()).toEqual(["aisle", "dead", "door", "entrance", "till"]);
    const deadInfo = list.find((s) => s.id === "dead")!;
    expect(deadInfo.connected).toBe(false);
    expect(deadInfo.reconnects).toBeGreaterThan(0);
    await p.child.stop();

    // No gaps: adding, changing and removing cameras did not stop or drop the others' frames.
    const got = await seqs(out);
    for (const id of ["door", "aisle", "till", "entrance"]) {
      expect(got.get(id)!.length).toBeGreaterThan(10);
      expect(contiguous(got.get(id)!)).toBe(true);
    }
    const removedAt = got.get("back")!.length;
    expect(contiguous(got.get("back")!)).toBe(true);
    expect(removedAt).toBeGreaterThan(4);
    const ended = (await readFile(out, "utf8")).split("\n").filter((l) => l.includes('"stream-end"'));
    expect(ended.map((l) => JSON.parse(l).stream)).toEqual(["back"]);

    // A restart reads the changed set from the state file, not the file's list.
    p = await startPipelineProcess(pipeline);
    procs.push(p);
    // The HTTP server answers while the stages start; the source lists its streams once it has read the state file.
    await until(() => /5 stream\(s\) from .*shop\.streams\.json/.test(p.child.stderr()), "the set from the state file");
    const again = await streams(p);
    expect(again.map((s) => s.id).sort()).toEqual(["aisle", "dead", "door", "entrance", "till"]);
    expect(again.find((s) => s.id === "till")!.options).toMatchObject({ fps: 4 });
    await p.child.stop();
    await rtsp.stop();
  });
});

describe("streams over NATS (bun run streams, KV bucket)", () => {
  test("add and remove with the CLI; every restart sees the same set", async () => {
    const nats = await startJetStreamServer();
    servers.push(nats);
    const pipeline = join(dir.path, "kv.yaml");
    const out = join(dir.path, "kv.jsonl");
    await writeFile(
      pipeline,
      `name: kvshop\nbus: ${nats.url}\nhttp: { port: 0, token: ${TOKEN} }\nstages:\n  - id: cams\n    use: ingest\n    with:\n      width: 64\n      height: 48\n      streams:\n        - ${file("one")}\n        - ${file("two")}\n  - id: out\n    use: sink-jsonl\n    with: { path: ${out}, flushInterval: 0.1 }\n`,
    );
    const cli = async (...args: string[]) => {
      const c = startProcess([process.execPath, "runtime/cli.ts", "streams", ...args, "--nats", nats.url, "--pipeline", "kvshop"], { cwd: repoRoot, env: { FRAMEWIRE_HTTP_TOKEN: TOKEN } });
      const code = await c.exited;
      return { code, out: c.stdout(), err: c.stderr() };
    };
    let p = await startPipelineProcess(pipeline);
    procs.push(p);
    await until(() => /reading .* \(live\)/.test(p.child.stderr()), "the cameras to start");
    const add = await cli("add", "three", CLIP, "realtime=true", "loop=true", "fps=5");
    expect(add.err).toBe("");
    expect(add.code).toBe(0);
    expect(add.out).toContain("three");
    const dup = await cli("add", "three", CLIP);
    expect(dup.code).toBe(1);
    expect(dup.err).toContain("error (409)");
    const rm = await cli("rm", "one");
    expect(rm.code).toBe(0);
    const ls = await cli("ls", "--json");
    expect(JSON.parse(ls.out).map((s: { id: string }) => s.id).sort()).toEqual(["three", "two"]);
    // Changes without the token are refused.
    const c = startProcess([process.execPath, "runtime/cli.ts", "streams", "rm", "two", "--nats", nats.url, "--pipeline", "kvshop"], { cwd: repoRoot, env: { FRAMEWIRE_HTTP_TOKEN: "" } });
    expect(await c.exited).toBe(1);
    expect(c.stderr()).toContain("error (401)");
    await p.child.stop();

    p = await startPipelineProcess(pipeline);
    procs.push(p);
    await until(() => p.child.stderr().includes("from NATS KV bucket fw_streams_kvshop"), "the set from KV");
    expect((await streams(p)).map((s) => s.id).sort()).toEqual(["three", "two"]);
    await p.child.stop();
  });
});
