/**
 * The `clip` stage with real ffmpeg: the shipped clip served by the real
 * RTSP server (H.264 copied, never re-encoded: the clips' packets are the
 * source's bytes), a file source encoded from the frames, overlapping
 * events merged into one clip, the record's `clip` and `clipPreRoll`, the
 * HTTP routes (Range, traversal refused), a clip directory that is not
 * writable, and a full disk (a real tmpfs) that stops clips while events
 * flow on.
 *
 * Events come from a test stage that emits them at fixed frames (zones'
 * own detection chain is tested elsewhere): every frame and event still
 * goes through the real ingest, clip and sink-jsonl stages.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as v from "valibot";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { mkdir, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MemoryBus } from "../runtime/bus/memory.ts";
import { Executor } from "../runtime/engine/executor.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import type { Event, Message } from "../runtime/core/message.ts";
import { StatusView } from "../runtime/observe/status.ts";
import { startHttpServer, type HttpServer } from "../runtime/observe/http/server.ts";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import clipOperator from "../operators/clip.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { captureLog, parse, registryWith, type CapturedLog } from "./support/pipeline.ts";
import { startRtspServer, stopAllRtspServers, type RtspServer } from "./support/rtsp.ts";
import { until } from "./support/wait.ts";
import { chromiumPath, openBrowser } from "./support/browser.ts";

setDefaultTimeout(120_000);

const VIDEO = join(repoRoot, "pipelines/media/vtest.mp4");
const ffmpeg = resolveFfmpeg();

/** Emits the events of `at` (by frame seq) right after their frame, like zones does. */
const testEvents = defineOperator({
  name: "test-events",
  kind: "transform",
  description: "Test stage: emits fixed events at fixed frames.",
  options: v.strictObject({
    at: v.optional(v.record(v.string(), v.array(v.strictObject({ type: v.string(), data: v.optional(v.record(v.string(), v.unknown()), {}) }))), {}),
    /** Also an `enter` of zone `shelf` every this many frames. */
    every: v.optional(v.number()),
  }),
  create({ at, every }) {
    return {
      process(msg: Message) {
        if (msg.kind !== "frame") return msg;
        const list = [...(at[String(msg.seq)] ?? []), ...(every && msg.seq > 0 && msg.seq % every === 0 ? [{ type: "enter", data: { zone: "shelf", trackId: msg.seq } }] : [])];
        const evs = list.map((e): Event => ({ kind: "event", stream: msg.stream, seq: msg.seq, ts: msg.ts, type: e.type, data: e.data }));
        return evs.length ? [msg, ...evs] : msg;
      },
    };
  },
});

interface Started {
  exec: Executor;
  log: CapturedLog;
  bus: MemoryBus;
  http?: HttpServer;
}

async function start(yaml: string, opts: { frames?: number; http?: boolean } = {}): Promise<Started> {
  const spec = parse(yaml, await registryWith(testEvents));
  const log = captureLog(spec.name);
  const bus = new MemoryBus();
  const exec = new Executor(spec, bus, { log, frames: opts.frames });
  await exec.start();
  const http = opts.http
    ? await startHttpServer(new StatusView(exec), { port: 0, host: "127.0.0.1", publicMetrics: true, maxBodyBytes: 65536, liveFps: 5, liveWidth: 640 }, log)
    : undefined;
  return { exec, log, bus, http };
}

type Line = { stream: string; seq: number; type?: string; clip?: string; clipPreRoll?: number; [k: string]: unknown };
const records = (file: string): Line[] => (existsSync(file) ? readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Line) : []);
const events = (file: string) => records(file).filter((r) => r.type !== undefined);

/** What ffmpeg says of a file: its video codec and duration in seconds. */
function probe(file: string): { codec?: string; seconds: number } {
  const r = spawnSync(ffmpeg, ["-hide_banner", "-i", file], { encoding: "utf8" });
  const d = /Duration: (\d+):(\d+):([\d.]+)/.exec(r.stderr);
  return { codec: /Video: (\w+)/.exec(r.stderr)?.[1], seconds: d ? +d[1] * 3600 + +d[2] * 60 + +d[3] : 0 };
}

/** MD5 of every decoded picture of a file (framemd5), and ffmpeg's decoding errors. */
function decode(file: string): { md5: string[]; errors: string } {
  const r = spawnSync(ffmpeg, ["-hide_banner", "-loglevel", "error", "-i", file, "-map", "0:v:0", "-pix_fmt", "yuv420p", "-f", "framemd5", "-"], { encoding: "utf8", maxBuffer: 64 << 20 });
  return { md5: r.stdout.split("\n").filter((l) => /^\d+,/.test(l)).map((l) => l.split(",").at(-1)!.trim()), errors: r.stderr.trim() };
}

/** Whether this machine lets the tests mount a small tmpfs (root, and mounting allowed): the real full disk. */
const tmpfsWorks = (() => {
  if (typeof process.getuid !== "function" || process.getuid() !== 0) return false;
  const probe = mkdtempSync(join(tmpdir(), "framewire-tmpfs-probe-"));
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe]);
  if (r.status === 0) spawnSync("umount", [probe]);
  rmSync(probe, { recursive: true, force: true });
  if (r.status !== 0) console.warn("disk-full test skipped: this machine cannot mount a tmpfs");
  return r.status === 0;
})();

let dir: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  dir = await tempDir("framewire-clip-");
});
afterAll(async () => {
  await stopAllRtspServers();
  await dir?.remove();
});

describe("copied from the camera (RTSP, H.264)", () => {
  let rtsp: RtspServer;
  let run: Started;
  let summaryText = "";
  const out = () => join(dir.path, "rtsp.jsonl");
  const clipDir = () => join(dir.path, "rtsp-clips");

  beforeAll(async () => {
    rtsp = await startRtspServer(VIDEO);
    run = await start(
      `
name: clips-rtsp
stages:
  - id: cam
    use: ingest
    with: { url: "${rtsp.url}" }
  - id: ev
    use: test-events
    with:
      at:
        "5": [{ type: cross, data: { line: entrance, direction: in, trackId: 1, class: person } }]
        "150": [{ type: counts, data: { lines: {} } }]
        "200": [{ type: enter, data: { zone: shelf, trackId: 2, class: person } }]
        "215": [{ type: cross, data: { line: back-door, direction: out, trackId: 3, class: person } }]
        "230": [{ type: exit, data: { zone: shelf, trackId: 2, class: person, dwellMs: 3000 } }]
  - id: clips
    use: clip
    with:
      dir: "${clipDir()}"
      preRoll: 3
      postRoll: 8
      sources: { cam: "${rtsp.url}" }
      events: { lines: [entrance], zones: [shelf] }
  - id: out
    use: sink-jsonl
    with: { path: "${out()}" }
`,
      { frames: 330, http: true },
    );
    await run.exec.done;
    summaryText = run.log.text();
  });
  afterAll(async () => {
    await run?.http?.stop();
    await run?.bus.close();
  });

  test("chosen events carry `clip`; overlapping ones share it; others pass unchanged", () => {
    const evs = events(out());
    const byType = (type: string, seq: number) => evs.find((e) => e.type === type && e.seq === seq)!;
    const first = byType("cross", 5);
    const enter = byType("enter", 200);
    const exit = byType("exit", 230);
    expect(first.clip).toMatch(/^cam\/\d{8}T\d{6}\.\d{3}Z-cross\.mp4$/);
    expect(enter.clip).toMatch(/^cam\/\d{8}T\d{6}\.\d{3}Z-enter\.mp4$/);
    // 3 s after the enter, within its post-roll: the same clip.
    expect(exit.clip).toBe(enter.clip);
    // Not in `events.lines`, and not a clip type: no clip.
    expect(byType("cross", 215).clip).toBeUndefined();
    expect(byType("counts", 150).clip).toBeUndefined();
    // Everything else of the events is as emitted.
    expect(exit).toMatchObject({ zone: "shelf", trackId: 2, dwellMs: 3000 });
    // The first event may come before the recorder has 3 s of video (it starts at the camera's first keyframe with
    // timestamps, on its own connection, so how much it has depends on which connected first): then the record says how much.
    if (first.clipPreRoll !== undefined) {
      expect(first.clipPreRoll).toBeGreaterThanOrEqual(0);
      expect(first.clipPreRoll).toBeLessThan(3);
    }
    expect(enter.clipPreRoll).toBeUndefined();
    expect(records(out()).filter((r) => r.type === undefined)).toHaveLength(330);
    expect(summaryText).toContain(`${enter.clip} (2 events`);
  });

  test("the clips are H.264 MP4s whose pictures are exactly the camera's (copied, not re-encoded)", () => {
    const evs = events(out());
    const enter = evs.find((e) => e.type === "enter")!;
    const first = evs.find((e) => e.type === "cross" && e.seq === 5)!;
    for (const e of [enter, first]) {
      const file = join(clipDir(), e.clip!);
      expect(existsSync(file)).toBe(true);
      expect(probe(file).codec).toBe("h264");
      const d = decode(file);
      expect(d.errors).toBe("");
      expect(d.md5.length).toBeGreaterThan(10);
    }
    // enter at 20 s, exit at 23 s: 3 s before the one to 8 s after the other, from the keyframe before (GOP 6.4 s).
    const merged = probe(join(clipDir(), enter.clip!)).seconds;
    expect(merged).toBeGreaterThan(13);
    expect(merged).toBeLessThan(14 + 6.4 + 1);
    // Copied, not re-encoded: every picture decodes to exactly a picture of the source file (an encoder would change them).
    const source = new Set(decode(VIDEO).md5);
    const got = decode(join(clipDir(), enter.clip!)).md5;
    expect(got.filter((m) => !source.has(m))).toEqual([]);
    // The rolling buffer is removed at close.
    expect(existsSync(join(clipDir(), ".ring"))).toBe(false);
  });

  test("GET /clips/<path> serves them (whole and by Range); /api/clips lists them; traversal and the buffer are refused", async () => {
    const url = run.http!.url;
    const enter = events(out()).find((e) => e.type === "enter")!;
    const bytes = readFileSync(join(clipDir(), enter.clip!));
    const whole = await fetch(`${url}/clips/${enter.clip}`);
    expect(whole.status).toBe(200);
    expect(whole.headers.get("content-type")).toBe("video/mp4");
    expect(Buffer.from(await whole.arrayBuffer()).equals(bytes)).toBe(true);
    const part = await fetch(`${url}/clips/${enter.clip}`, { headers: { range: "bytes=100-299" } });
    expect(part.status).toBe(206);
    expect(part.headers.get("content-range")).toBe(`bytes 100-299/${bytes.length}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(100, 300))).toBe(true);
    expect((await fetch(`${url}/clips/${enter.clip}`, { headers: { range: `bytes=${bytes.length}-` } })).status).toBe(416);

    const listed = (await (await fetch(`${url}/api/clips?stream=cam`)).json()) as { clips: { path: string; url: string; type: string; stage: string }[] };
    expect(listed.clips.map((c) => c.path)).toContain(enter.clip!);
    expect(listed.clips.find((c) => c.path === enter.clip)).toMatchObject({ type: "enter", stage: "clips", url: `/clips/${enter.clip}` });

    await writeFile(join(dir.path, "secret.mp4"), "not for you");
    for (const bad of ["..%2Fsecret.mp4", "cam/..%2F..%2Fsecret.mp4", "%2E%2E/secret.mp4", ".ring/x.mp4", "cam/x.ts", "cam%2F..%2F..%2Fsecret.mp4"]) {
      const res = await fetch(`${url}/clips/${bad}`);
      expect([bad, res.status]).toEqual([bad, 404]);
    }
    expect((await fetch(`${url}/api/clips?stream=../x`)).status).toBe(400);
  });

  test.skipIf(!chromiumPath())("the live page links each stream's clips (Chromium)", async () => {
    const enter = events(out()).find((e) => e.type === "enter")!;
    const browser = await openBrowser();
    try {
      const errors: string[] = [];
      browser.page.on("pageerror", (e) => errors.push(e.message));
      await browser.page.goto(run.http!.url);
      const link = browser.page.locator(`[data-stream=cam] .clips a[data-path="${enter.clip}"]`);
      await link.waitFor({ timeout: 20_000 });
      expect(await link.getAttribute("href")).toBe(`/clips/${enter.clip}`);
      expect(await link.textContent()).toContain("enter");
      const res = await fetch(new URL((await link.getAttribute("href"))!, run.http!.url));
      expect(res.headers.get("content-type")).toBe("video/mp4");
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
    }
  });
});

describe("a file source, encoded from the frames", () => {
  const out = () => join(dir.path, "file.jsonl");
  const clipDir = () => join(dir.path, "file-clips");
  let run: Started;

  beforeAll(async () => {
    run = await start(
      `
name: clips-file
stages:
  - id: cam
    use: ingest
    with: { url: pipelines/media/vtest.mp4, realtime: true }
  - id: ev
    use: test-events
    with:
      at:
        "3": [{ type: cross, data: { line: entrance, direction: in, trackId: 1 } }]
        "60": [{ type: enter, data: { zone: shelf, trackId: 2 } }]
  - id: clips
    use: clip
    with: { dir: "${clipDir()}", preRoll: 2, postRoll: 2 }
  - id: out
    use: sink-jsonl
    with: { path: "${out()}" }
`,
      { frames: 100 },
    );
    await run.exec.done;
    await run.bus.close();
  });

  test("events get clips of the frames as they passed (re-encoded to H.264); an event before 2 s of video says how much it has", () => {
    const evs = events(out());
    const early = evs.find((e) => e.seq === 3)!;
    const later = evs.find((e) => e.seq === 60)!;
    expect(early.clip).toMatch(/^cam\/\d{8}T\d{6}\.\d{3}Z-cross\.mp4$/);
    // Frames 0..3 came before it: a fraction of a second of pre-roll, not the 2 s asked for.
    expect(early.clipPreRoll).toBeGreaterThanOrEqual(0);
    expect(early.clipPreRoll).toBeLessThan(1);
    expect(later.clipPreRoll).toBeUndefined();
    for (const e of [early, later]) {
      const file = join(clipDir(), e.clip!);
      expect(existsSync(file)).toBe(true);
      expect(decode(file).errors).toBe("");
    }
    const p = probe(join(clipDir(), later.clip!));
    expect(p.codec).toBe("h264");
    // 2 s before to 2 s after, cut at the encoder's 1 s segments.
    expect(p.seconds).toBeGreaterThan(3);
    expect(p.seconds).toBeLessThan(5.5);
    // Encoded here: its pictures are the encoder's, not the file's.
    const source = new Set(decode(VIDEO).md5);
    expect(decode(join(clipDir(), later.clip!)).md5.filter((m) => source.has(m)).length).toBe(0);
    expect(run.log.text()).toContain("other streams encoded from their frames");
  });
});

describe("bad input", () => {
  const pipeline = (clipDir: string, extra = "") => `
name: clips-bad
stages:
  - id: cam
    use: ingest
    with: { url: pipelines/media/vtest.mp4, realtime: true, loop: true }
  - id: ev
    use: test-events
    with: { every: 30 }
  - id: clips
    use: clip
    with: { dir: "${clipDir}", preRoll: 1, postRoll: 1, retry: 2${extra} }
  - id: out
    use: sink-jsonl
    with: { path: "${join(dir.path, "bad.jsonl")}" }
`;

  test("a clip directory that cannot be written is a clear error at start (E_CLIP_DIR; the CLI exits 2)", async () => {
    await writeFile(join(dir.path, "a-file"), "");
    const target = join(dir.path, "a-file", "clips");
    const err = (await start(pipeline(target)).then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: string; message: string };
    expect(err?.code).toBe("E_CLIP_DIR");
    expect(err.message).toContain(`the clip directory ${target} is not writable`);

    const file = join(dir.path, "bad-dir.yaml");
    await writeFile(file, pipeline(target).replace("use: test-events\n    with: { every: 30 }", "use: zones\n    with: { lines: [{ id: a, from: [0, 0.5], to: [1, 0.5] }] }"));
    const r = spawnSync(process.execPath, ["runtime/cli.ts", "run", file], { cwd: repoRoot, encoding: "utf8", timeout: 60_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("is not writable");
  });

  const mountPoint = join(tmpdir(), `framewire-clip-full-${process.pid}`);
  let mounted = false;
  afterAll(() => {
    if (mounted) spawnSync("umount", [mountPoint]);
    spawnSync("rmdir", [mountPoint]);
  });

  test.skipIf(!tmpfsWorks)("disk full (a 2 MB tmpfs): clips stop with a logged error, events flow on, and clips resume once there is room", async () => {
    await mkdir(mountPoint, { recursive: true });
    const m = spawnSync("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mountPoint], { encoding: "utf8" });
    expect(m.stderr).toBe("");
    mounted = true;
    const clipDir = join(mountPoint, "clips");
    const filler = join(mountPoint, "filler");
    // Leave about 100 KB: a few segments of the buffer, then ENOSPC.
    spawnSync("dd", ["if=/dev/zero", `of=${filler}`, "bs=1k", `count=${2048 - 100}`], { encoding: "utf8" });
    const run = await start(pipeline(clipDir));
    try {
      await until(() => run.log.text().includes("clips stopped"), "clips to stop on a full disk", 60_000);
      const stoppedAt = events(join(dir.path, "bad.jsonl")).length;
      expect(run.log.lines.find((l) => l.includes("clips stopped"))).toMatch(/^error .*No space left on device/);
      // Events keep coming while clips are stopped, without `clip`.
      await until(() => events(join(dir.path, "bad.jsonl")).slice(stoppedAt).some((e) => e.clip === undefined), "an event without a clip", 30_000);
      spawnSync("rm", ["-f", filler]);
      await until(() => run.log.text().includes("clips resumed"), "clips to resume", 30_000);
      await until(
        () => events(join(dir.path, "bad.jsonl")).some((e) => e.clip !== undefined && existsSync(join(clipDir, e.clip)) && statSync(join(clipDir, e.clip)).size > 0),
        "a clip written after the disk had room again",
        60_000,
      );
    } finally {
      run.exec.stop();
      await run.exec.done;
      await run.bus.close();
    }
    // Every 30th frame's event reached the sink, with or without a clip.
    const evs = events(join(dir.path, "bad.jsonl"));
    const seqs = evs.map((e) => e.seq);
    expect(seqs).toEqual(seqs.map((_, i) => 30 * (i + 1)));
    expect(evs.some((e) => e.clip === undefined)).toBe(true);
  });
});

test("retention: clips older than maxAgeHours go, then the oldest until all fit maxTotalMB; the store lists what is left, newest first", async () => {
  const d = join(dir.path, "keep");
  await mkdir(join(d, "cam"), { recursive: true });
  await mkdir(join(d, "door"), { recursive: true });
  const hoursAgo = (h: number) => new Date(Date.now() - h * 3_600_000);
  const files: [string, number, number][] = [
    ["cam/20260101T080000.000Z-cross.mp4", 600, 3], // past maxAgeHours
    ["cam/20260101T090000.000Z-enter.mp4", 600, 0.5], // oldest of the rest: over the size limit
    ["cam/20260101T100000.000Z-exit.mp4", 600, 0.3],
    ["door/20260101T110000.000Z-cross~2.mp4", 300, 0.1],
  ];
  for (const [name, size, age] of files) {
    await writeFile(join(d, name), new Uint8Array(size));
    await utimes(join(d, name), hoursAgo(age), hoursAgo(age));
  }
  await writeFile(join(d, "cam", "notes.txt"), "kept: not a clip");
  const log = captureLog("keep");
  // 1500 bytes after the age limit; 0.001 MB is 1048 bytes: the oldest one goes.
  const options = v.parse(clipOperator.options, { dir: d, keep: { maxAgeHours: 2, maxTotalMB: 0.001 } });
  const stage = await clipOperator.create(options, { stage: "clips", pipeline: "keep", log, signal: new AbortController().signal });
  try {
    await until(() => log.text().includes("retention: removed 2 clip(s)"), "the retention sweep at start");
    expect(existsSync(join(d, files[0][0]))).toBe(false);
    expect(existsSync(join(d, files[1][0]))).toBe(false);
    expect(existsSync(join(d, "cam", "notes.txt"))).toBe(true);
    const listed = await stage.clips!.list();
    expect(listed.map((c) => [c.path, c.stream, c.type, c.bytes])).toEqual([
      ["door/20260101T110000.000Z-cross~2.mp4", "door", "cross", 300],
      ["cam/20260101T100000.000Z-exit.mp4", "cam", "exit", 600],
    ]);
    expect(listed[1].ts).toBe(Date.UTC(2026, 0, 1, 10));
    expect((await stage.clips!.list("door")).map((c) => c.path)).toEqual(["door/20260101T110000.000Z-cross~2.mp4"]);
  } finally {
    await stage.close!();
  }
});
