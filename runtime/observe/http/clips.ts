/**
 * Event clips over HTTP (operators/clip.ts writes them):
 *
 *   GET /api/clips?stream=&limit=     clips on disk, newest first: { clips: [{ path, url, stream, ts, type, bytes, stage }] }
 *   GET /clips/<stream>/<name>.mp4    the MP4 (Range requests answered with 206, so players can seek)
 *
 * Both are read endpoints (public unless `publicMetrics: false`). A clip
 * path may only name an .mp4 inside a clip stage's directory: no `..`, no
 * dot-files (the rolling buffer under `.ring/` is never served), symlinks
 * resolved before the check.
 */
import * as v from "valibot";
import type { Hono } from "hono";
import { open, realpath, stat } from "node:fs/promises";
import { join, sep } from "node:path";
import type { ClipInfo, ClipStore } from "../../core/operator.ts";
import { httpError, type RouteDeps } from "./routes.ts";

const Query = v.object({
  stream: v.optional(v.pipe(v.string(), v.regex(/^[\w-]{1,64}$/, "expected a stream id"))),
  limit: v.optional(v.pipe(v.string(), v.regex(/^\d{1,4}$/, "expected a number"), v.transform(Number), v.minValue(1), v.maxValue(1000)), "100"),
});

/** A clip as `/api/clips` lists it: where to fetch it, and the stage that wrote it. */
export interface ListedClip extends ClipInfo {
  url: string;
  stage: string;
}

const CHUNK = 256 * 1024;

/** The bytes [start, end] of a file as a stream, read as the client takes them. */
function fileStream(path: string, start: number, end: number): ReadableStream<Uint8Array> {
  let pos = start;
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      fh ??= await open(path, "r");
      const n = Math.min(CHUNK, end + 1 - pos);
      if (n <= 0) {
        await fh.close();
        return controller.close();
      }
      const buf = new Uint8Array(n);
      const { bytesRead } = await fh.read(buf, 0, n, pos);
      if (bytesRead === 0) {
        await fh.close();
        return controller.close();
      }
      pos += bytesRead;
      controller.enqueue(buf.subarray(0, bytesRead));
    },
    async cancel() {
      await fh?.close();
    },
  });
}

/**
 * The file a request path names inside one of the stores' directories, or
 * undefined: each segment decoded, none empty, `.`-prefixed or holding a
 * separator, the last an .mp4, and the resolved file inside the directory.
 * @example
 * await clipFile("cam/20261128T164007.512Z-cross.mp4", stores); // "/srv/clips/cam/20261128T164007.512Z-cross.mp4"
 * await clipFile("..%2F..%2Fetc%2Fpasswd", stores);              // undefined
 */
export async function clipFile(rawPath: string, stores: ClipStore[]): Promise<string | undefined> {
  const parts = rawPath.split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return "";
    }
  });
  if (!parts.length || parts.some((p) => !p || p.startsWith(".") || /[\\/\0]/.test(p)) || !parts.at(-1)!.endsWith(".mp4")) return undefined;
  for (const s of stores) {
    const root = await realpath(s.dir).catch(() => undefined);
    if (!root) continue;
    const real = await realpath(join(root, ...parts)).catch(() => undefined);
    if (!real || !real.startsWith(root.endsWith(sep) ? root : root + sep)) continue;
    if ((await stat(real).catch(() => undefined))?.isFile()) return real;
  }
  return undefined;
}

/**
 * Adds `/api/clips` and `/clips/*` to the app.
 * @example
 * registerClipRoutes(app, { view, read, control, limit, log });
 */
export function registerClipRoutes(app: Hono, d: RouteDeps): void {
  const stores = () => d.view.exec.live().flatMap((s) => (s.instance.clips ? [{ stage: s.id, store: s.instance.clips }] : []));

  app.get("/api/clips", d.read, async (c) => {
    const q = v.safeParse(Query, c.req.query());
    if (!q.success) throw httpError(400, `invalid query: ${q.issues.map((i) => `${v.getDotPath(i) ?? "query"}: ${i.message}`).join("; ")}`);
    const lists = await Promise.all(
      stores().map(async ({ stage, store }) =>
        (await store.list(q.output.stream)).map((ci): ListedClip => ({ ...ci, stage, url: `/clips/${ci.path.split("/").map(encodeURIComponent).join("/")}` })),
      ),
    );
    const clips = lists.flat().sort((a, b) => b.ts - a.ts).slice(0, q.output.limit);
    return c.json({ clips });
  });

  app.get("/clips/*", d.read, async (c) => {
    const raw = new URL(c.req.url).pathname.slice("/clips/".length);
    const file = await clipFile(raw, stores().map((s) => s.store));
    if (!file) throw httpError(404, "no such clip");
    const size = (await stat(file)).size;
    const headers: Record<string, string> = { "content-type": "video/mp4", "accept-ranges": "bytes", "cache-control": "private, max-age=3600" };
    const range = c.req.header("range");
    if (!range) return c.body(fileStream(file, 0, size - 1), 200, { ...headers, "content-length": String(size) });
    const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
    let start = m && m[1] !== "" ? Number(m[1]) : NaN;
    let end = m && m[2] !== "" ? Math.min(Number(m[2]), size - 1) : size - 1;
    if (m && m[1] === "" && m[2] !== "") [start, end] = [Math.max(0, size - Number(m[2])), size - 1];
    if (!m || !Number.isFinite(start) || start > end || start >= size) {
      return c.body(JSON.stringify({ error: `range not satisfiable: ${range} (size ${size})` }), 416, { "content-range": `bytes */${size}`, "content-type": "application/json" });
    }
    return c.body(fileStream(file, start, end), 206, { ...headers, "content-length": String(end - start + 1), "content-range": `bytes ${start}-${end}/${size}` });
  });
}
