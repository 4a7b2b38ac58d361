import { afterAll, beforeAll, beforeEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import type { Frame } from "../runtime/core/message.ts";
import type { SourceInstance } from "../runtime/core/operator.ts";
import { makeSource, readAll, type Made } from "./support/operators.ts";
import type { CapturedLog } from "./support/pipeline.ts";
import { sampleVideo, tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess } from "./support/process.ts";
import { startRtspServer, stopAllRtspServers, type RtspServer } from "./support/rtsp.ts";
import { startSilentServer } from "./support/silent-server.ts";
import { processesMatching, until } from "./support/wait.ts";

// RTSP tests wait on events (frames, log lines), never on a time of their own: on a loaded machine only this bounds them.
setDefaultTimeout(90_000);

/** Resolves when `cond` holds, checked whenever `subscribe`'s event fires (no polling, no limit of its own). */
function when(subscribe: (notify: () => void) => () => void, cond: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    if (cond()) return resolve();
    const off = subscribe(() => {
      if (!cond()) return;
      off();
      resolve();
    });
  });
}

/** Calls `listener` on every line the captured log gets. */
function onLogLine(log: CapturedLog, listener: () => void): () => void {
  const lines = log.lines;
  const push = Array.prototype.push;
  lines.push = function (...items: string[]) {
    const n = push.apply(this, items);
    listener();
    return n;
  };
  return () => void (lines.push = push);
}

/** Runs a source in the background, keeping its frames; stop() aborts it and waits for run() to return. */
function runInBackground(made: Made<SourceInstance>) {
  const frames: Frame[] = [];
  const listeners = new Set<() => void>();
  const finished = made.instance.run(async (f) => {
    if (f.kind !== "frame") return;
    frames.push(f);
    for (const l of [...listeners]) l();
  }, made.abort.signal);
  return {
    frames,
    finished,
    /** Resolves once `n` frames in all have arrived. */
    frame: (n: number) => when((l) => (listeners.add(l), () => listeners.delete(l)), () => frames.length >= n),
    /** Resolves once the source's log matches `re`. */
    logged: (re: RegExp) => when((l) => onLogLine(made.log, l), () => re.test(made.log.text())),
    async stop() {
      made.abort.abort();
      await finished;
      await made.instance.close?.();
    },
  };
}

let tmp: Awaited<ReturnType<typeof tempDir>>;
/** The first 3 s (30 frames) of the sample clip. */
let shortClip: string;

beforeAll(async () => {
  tmp = await tempDir();
  shortClip = join(tmp.path, "short.mp4");
  // Re-encoded (not stream-copied) so it holds exactly 30 frames.
  const ff = startProcess([resolveFfmpeg(), "-loglevel", "error", "-y", "-i", sampleVideo, "-t", "3", "-an", "-c:v", "libx264", "-preset", "ultrafast", shortClip]);
  expect(await ff.exited).toBe(0);
});
afterAll(async () => {
  await stopAllRtspServers();
  await tmp?.remove();
});

describe("ingest from files", () => {
  test("decodes every frame of a file, in order, as rgb24", async () => {
    const frames = await readAll({ url: shortClip });
    expect(frames).toHaveLength(30);
    expect(frames.map((f) => f.seq)).toEqual(Array.from({ length: 30 }, (_, i) => i));
    for (const f of frames) {
      expect(f).toMatchObject({ kind: "frame", stream: "cam", live: false, image: { width: 480, height: 360, format: "rgb24" } });
      expect(f.image.data).toHaveLength(480 * 360 * 3);
    }
  });

  test("fps caps by timestamps: 2 fps over a 3 s clip keeps 6 frames", async () => {
    const frames = await readAll({ url: shortClip, fps: 2 });
    expect(frames.length).toBeGreaterThanOrEqual(5);
    expect(frames.length).toBeLessThanOrEqual(7);
  });

  test("width/height scale in ffmpeg; stream names the frames", async () => {
    const frames = await readAll({ url: shortClip, width: 320, height: 240, stream: "door", fps: 1 });
    expect(frames.length).toBeGreaterThan(0);
    expect(frames[0]).toMatchObject({ stream: "door", image: { width: 320, height: 240 } });
    expect(frames[0].image.data).toHaveLength(320 * 240 * 3);
  });

  test("loop restarts the file; seq keeps counting", async () => {
    const src = await makeSource("ingest", { url: shortClip, loop: true, fps: 5 });
    const frames: Frame[] = [];
    await src.instance.run(async (f) => {
      if (f.kind !== "frame") return;
      frames.push(f);
      if (frames.length === 20) src.abort.abort();
    }, src.abort.signal);
    await src.instance.close?.();
    // 3 s at 5 fps is 15 frames per pass: 20 frames need a second pass.
    expect(frames).toHaveLength(20);
    expect(frames.map((f) => f.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  test("a stream that changes resolution (480x360 → 1280x720) keeps each picture's own size, not the first", async () => {
    const parts = [join(tmp.path, "small.ts"), join(tmp.path, "large.ts")];
    const x264 = ["-an", "-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts"];
    const enc = async (args: string[]) => expect(await startProcess([resolveFfmpeg(), "-loglevel", "error", "-y", ...args]).exited).toBe(0);
    await enc(["-i", sampleVideo, "-frames:v", "10", ...x264, parts[0]]);
    await enc(["-ss", "2", "-i", sampleVideo, "-frames:v", "10", "-vf", "scale=1280:720", ...x264, parts[1]]);
    const changing = join(tmp.path, "changing.ts");
    await writeFile(changing, Buffer.concat([await readFile(parts[0]), await readFile(parts[1])]));
    const src = await makeSource("ingest", { url: changing }, "cam");
    const frames: Frame[] = [];
    await src.instance.run(async (f) => void (f.kind === "frame" && frames.push(f)), src.abort.signal);
    expect(frames.map((f) => `${f.image.width}x${f.image.height}`)).toEqual([...Array(10).fill("480x360"), ...Array(10).fill("1280x720")]);
    for (const f of frames) expect(f.image.data).toHaveLength(f.image.width * f.image.height * 3);
    // The large pictures are the second clip's own, unscaled (so boxes in source pixels stay right).
    const large = await readAll({ url: parts[1] });
    for (let i = 0; i < 10; i++) expect(Buffer.from(frames[10 + i].image.data).equals(Buffer.from(large[i].image.data))).toBe(true);
    expect(src.log.text()).toContain("resolution changed from 480x360 to 1280x720 at frame 10");
  });

  test("a file ffmpeg cannot read fails with ffmpeg's reason", async () => {
    const bogus = join(tmp.path, "not-a-video.mp4");
    await writeFile(bogus, "this is not a video\n");
    const src = await makeSource("ingest", { url: bogus });
    await expect(src.instance.run(async () => {}, src.abort.signal)).rejects.toThrow(/ffmpeg could not read .*not-a-video\.mp4 \(exit \d+\)/);
  });
});

describe("ingest from a real RTSP server", () => {
  let server: RtspServer;
  beforeAll(async () => {
    server = await startRtspServer(sampleVideo);
  });
  // The tests stop and restart the shared server themselves; one that is gone when a test starts was killed from outside.
  beforeEach(async () => {
    if (server.alive()) return;
    console.error(`the RTSP server (pid ${server.pid}) was gone before the test: restarting it on port ${server.port}`);
    server = await server.restart();
  });

  test("frames arrive with stream id, increasing seq and ts, 480x360 rgb24, marked live", async () => {
    const src = await makeSource("ingest", { url: server.url }, "door");
    const run = runInBackground(src);
    await run.frame(8);
    await run.stop();
    const fs = run.frames;
    expect(fs.map((f) => f.seq)).toEqual(fs.map((_, i) => i));
    for (let i = 0; i < fs.length; i++) {
      expect(fs[i]).toMatchObject({ stream: "door", live: true, image: { width: 480, height: 360, format: "rgb24" } });
      expect(fs[i].image.data).toHaveLength(480 * 360 * 3);
      if (i > 0) expect(fs[i].ts).toBeGreaterThanOrEqual(fs[i - 1].ts);
    }
    expect(src.log.text()).toContain(`reading ${server.url} (live)`);
  });

  test("fps: 2 gets about a fifth of the 10 fps stream", async () => {
    // Both clients watch the same shared stream, so the uncapped one is the clock.
    const capped = runInBackground(await makeSource("ingest", { url: server.url, fps: 2 }, "capped"));
    const full = runInBackground(await makeSource("ingest", { url: server.url }, "full"));
    await Promise.all([capped.frame(1), full.frame(1)]);
    const [c0, f0] = [capped.frames.length, full.frames.length];
    await full.frame(f0 + 40);
    const [c, f] = [capped.frames.length - c0, full.frames.length - f0];
    await Promise.all([capped.stop(), full.stop()]);
    // 40 frames of a 10 fps stream are 4 s: about 8 frames at 2 fps.
    expect(c).toBeGreaterThanOrEqual(4);
    expect(c).toBeLessThanOrEqual(12);
    expect(f).toBeGreaterThanOrEqual(2.5 * c);
  });

  test("server killed mid-stream and restarted on the same port: ingest reconnects and frames continue", async () => {
    const src = await makeSource("ingest", { url: server.url, reconnectDelay: 0.2, reconnectMaxDelay: 1, stallTimeout: 3 }, "cam");
    const run = runInBackground(src);
    try {
      await run.frame(5);
      await server.stop();
      // Stay down until ingest has also failed to reconnect once (connection refused).
      await run.logged(/reconnect #2 in 0\.4 s/);
      const before = run.frames.length;
      const port = server.port;
      server = await server.restart();
      expect(server.port).toBe(port);
      await run.frame(before + 5);
    } finally {
      await run.stop();
    }
    const log = src.log.text();
    expect(log).toMatch(/stream lost after [1-9]\d* frames .*reconnect #1 in 0\.2 s/);
    expect(log).toMatch(/stream lost after 0 frames \(exit \d+: .*\); reconnect #2 in 0\.4 s/);
    expect(run.frames.map((f) => f.seq)).toEqual(run.frames.map((_, i) => i));
    expect(run.frames.at(-1)!.image).toMatchObject({ width: 480, height: 360 });
  });

  test("camera back after an outage: frames return within one capped backoff step, never hammering the dead camera", async () => {
    // The defaults: 0.5 s doubling up to 2 s.
    const src = await makeSource("ingest", { url: server.url }, "cam");
    const run = runInBackground(src);
    try {
      await run.frame(3);
      await server.stop();
      // Down through the whole schedule: 0.5, 1, 2, then 2 s between attempts.
      await run.logged(/reconnect #4 in/);
      const before = run.frames.length;
      server = await server.restart();
      const back = performance.now();
      await run.frame(before + 1);
      const ms = performance.now() - back;
      console.log(`ingest: first frame ${(ms / 1000).toFixed(2)} s after the RTSP server came back (backoff cap 2 s)`);
    } finally {
      await run.stop();
    }
    const delays = [...src.log.text().matchAll(/reconnect #\d+ in ([\d.]+) s/g)].map((m) => Number(m[1]));
    // The time from a camera's return to the next attempt is bounded by the cap; no attempt comes sooner than the schedule says.
    expect(delays.slice(0, 4)).toEqual([0.5, 1, 2, 2]);
    expect(Math.max(...delays)).toBeLessThanOrEqual(2);
    expect(run.frames.map((f) => f.seq)).toEqual(run.frames.map((_, i) => i));
  });
});

describe("RTSP test harness", () => {
  test("a server that cannot start is a clear error, not a hang", async () => {
    await expect(startRtspServer(join(tmp.path, "missing.mp4"))).rejects.toThrow(/did not start: .*no such file/s);
    const first = await startRtspServer(sampleVideo);
    try {
      await expect(startRtspServer(sampleVideo, { port: first.port })).rejects.toThrow(`cannot listen on 127.0.0.1:${first.port}`);
    } finally {
      await first.stop();
    }
    expect(await processesMatching(`rtsp-server.py ${first.port} `)).toEqual([]);
  });
});

describe("ingest failure handling", () => {
  test("stall watchdog: a server that accepts but never answers gets ffmpeg restarted", async () => {
    const silent = await startSilentServer();
    const url = `rtsp://127.0.0.1:${silent.port}/stream`;
    const src = await makeSource("ingest", { url, stallTimeout: 1, reconnectDelay: 0.1 });
    const run = runInBackground(src);
    try {
      await until(() => silent.connections() >= 2, "ffmpeg to be restarted and connect again");
    } finally {
      await run.stop();
      await silent.stop();
    }
    expect(run.frames).toHaveLength(0);
    const log = src.log.text();
    expect(log).toContain("no frame for 1 s; restarting ffmpeg");
    expect(log).toMatch(/stream lost after 0 frames \(stalled\); reconnect #1/);
    expect(await processesMatching(url)).toEqual([]);
  });

  test("unreachable URL: reconnect attempts back off, and stop ends it cleanly", async () => {
    const port = await freePort();
    const url = `rtsp://127.0.0.1:${port}/stream`;
    const src = await makeSource("ingest", { url, reconnectDelay: 0.1, reconnectMaxDelay: 0.4 });
    const run = runInBackground(src);
    try {
      await run.logged(/reconnect #5 /);
    } finally {
      await run.stop();
    }
    const delays = [...src.log.text().matchAll(/reconnect #\d+ in ([\d.]+) s/g)].map((m) => Number(m[1]));
    // Doubling from 0.1 s, capped at 0.4 s.
    expect(delays.slice(0, 5)).toEqual([0.1, 0.2, 0.4, 0.4, 0.4]);
    expect(src.log.text()).toMatch(/stream lost after 0 frames \(exit \d+: .*(refused|Connection)/);
    expect(run.frames).toHaveLength(0);
    expect(await processesMatching(url)).toEqual([]);
  });
});
