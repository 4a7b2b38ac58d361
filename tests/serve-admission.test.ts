/**
 * Admission control of `bun run serve` by decoded bytes in flight: 100
 * concurrent 6000×6000 PNGs (13 KB each, 103 MiB decoded) against a real
 * server process with a 128 MiB decode budget. One at a time is admitted,
 * the rest get 503 with Retry-After at once (counted in /metrics), the
 * server's peak RSS (VmHWM) stays bounded, and images whose header alone
 * declares more than the budget get 413 before anything is decoded.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { readBytes, readText } from "../runtime/platform/index.ts";
import { busImage, modelFile, tempDir } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";
import { json, startServe, type ServeProcess } from "./support/serve.ts";

setDefaultTimeout(120_000);

const BUDGET_MB = 128;
let server: ServeProcess;
let dir: Awaited<ReturnType<typeof tempDir>>;
let bomb: Uint8Array;

beforeAll(async () => {
  dir = await tempDir();
  const file = join(dir.path, "white-6000.png");
  // 1-bit PNG: a few KB on the wire, 6000 × 6000 × 3 bytes once decoded.
  const ff = startProcess([resolveFfmpeg(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "color=white:s=6000x6000", "-frames:v", "1", "-pix_fmt", "monob", "-compression_level", "9", "-y", file]);
  expect(await ff.exited).toBe(0);
  bomb = await readBytes(file);
  server = await startServe(["--model", modelFile, "--decode-budget-mb", String(BUDGET_MB), "--max-pixels", "60000000"]);
});
afterAll(async () => {
  await server?.stop();
  await dir?.remove();
});

/** The server's peak resident set so far, MiB (VmHWM of /proc/PID/status). */
async function peakRssMiB(pid: number): Promise<number> {
  const kb = /VmHWM:\s+(\d+) kB/.exec(await readText(`/proc/${pid}/status`));
  if (!kb) throw new Error(`no VmHWM for ${pid}`);
  return Number(kb[1]) / 1024;
}

/** A PNG signature and IHDR chunk declaring `w`×`h`, nothing else. */
function pngHeader(w: number, h: number): Uint8Array {
  const b = new Uint8Array(33);
  b.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52]);
  const dv = new DataView(b.buffer);
  dv.setUint32(16, w);
  dv.setUint32(20, h);
  b.set([8, 2, 0, 0, 0], 24);
  return b;
}

/** SOI, a baseline frame header declaring `w`×`h` (3 components), EOI. */
function jpegHeader(w: number, h: number): Uint8Array {
  return new Uint8Array([0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, h >> 8, h & 0xff, w >> 8, w & 0xff, 0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);
}

const post = (body: Uint8Array, type: string) => fetch(`${server.url}/detect`, { method: "POST", body, headers: { "content-type": type } });
const metricValue = (text: string, series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, (c) => `\\${c}`)} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);

describe("serve: admission control by decoded bytes", () => {
  test("100 concurrent 6000x6000 PNGs: one admitted at a time, the rest 503 with Retry-After, peak RSS bounded", async () => {
    expect(server.child.stderr()).toContain(`POST /detect (decode budget ${BUDGET_MB} MiB)`);
    expect(bomb.byteLength).toBeLessThan(32 * 1024);
    const answers = await Promise.all(
      Array.from({ length: 100 }, async () => {
        const res = await post(bomb, "image/png");
        return { status: res.status, retryAfter: res.headers.get("retry-after"), body: await json(res) };
      }),
    );
    const ok = answers.filter((a) => a.status === 200);
    const refused = answers.filter((a) => a.status === 503);
    expect(ok.length + refused.length).toBe(100);
    // 103 MiB each against 128 MiB: one decodes while the burst arrives; the burst takes milliseconds, a decode seconds.
    expect(ok.length).toBeGreaterThanOrEqual(1);
    expect(refused.length).toBeGreaterThanOrEqual(50);
    for (const r of refused) {
      expect(Number(r.retryAfter)).toBeGreaterThanOrEqual(1);
      expect(r.body.error).toMatch(/^decode budget full: [\d.]+ of 128\.0 MiB held by \d+ request\(s\), this 6000x6000 image needs 103\.0 MiB; retry in \d+ s$/);
    }
    for (const a of ok) expect(a.body).toMatchObject({ width: 6000, height: 6000 });

    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metricValue(metrics, 'framewire_serve_overloaded_total{reason="decode-budget"}')).toBe(refused.length);
    expect(metricValue(metrics, "framewire_serve_decode_bytes_in_flight")).toBe(0);
    expect(metricValue(metrics, "framewire_serve_decode_budget_bytes")).toBe(BUDGET_MB * 2 ** 20);
    // Without a budget (the two decoders, one per core here, on two such images at once) the peak was 810–815 MiB
    // (RELIABILITY.md); one at a time measured 463–467 MiB. The bar leaves room for a loaded machine's allocator.
    const peak = await peakRssMiB(server.child.pid);
    console.log(`serve peak RSS ${peak.toFixed(0)} MiB; ${ok.length} answered, ${refused.length} refused`);
    expect(peak).toBeLessThan(700);

    // Freed: the next request is served.
    const after = await post(await readBytes(busImage), "image/jpeg");
    expect(after.status).toBe(200);
  });

  test("an image whose header alone declares more than the budget: 413 before decoding", async () => {
    const before = await (await fetch(`${server.url}/metrics`)).text();
    const was = metricValue(before, 'framewire_serve_images_rejected_total{reason="dimensions"}') || 0;
    // 7000x7000 is 49 MP, inside --max-pixels 60000000, but 140.2 MiB decoded.
    for (const [bytes, type] of [
      [pngHeader(7000, 7000), "image/png"],
      [jpegHeader(7000, 7000), "image/jpeg"],
    ] as const) {
      const t0 = performance.now();
      const res = await post(bytes, type);
      expect(res.status).toBe(413);
      expect((await json(res)).error).toBe("image declares 7000x7000 pixels (49.0 MP); it decodes to 140.2 MiB, over the decode budget of 128.0 MiB (--decode-budget-mb)");
      // From the header: no ffmpeg child, no decode.
      expect(performance.now() - t0).toBeLessThan(2000);
    }
    // Over --max-pixels: refused by the pixel cap first.
    const huge = await post(pngHeader(8000, 8000), "image/png");
    expect(huge.status).toBe(413);
    expect((await json(huge)).error).toBe("image declares 8000x8000 pixels (64.0 MP); the limit is 60.0 MP");
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metricValue(metrics, 'framewire_serve_images_rejected_total{reason="dimensions"}')).toBe(was + 3);
  });
});
