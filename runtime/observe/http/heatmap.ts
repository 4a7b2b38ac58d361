/**
 * Heatmaps over HTTP (operators/heatmap.ts accumulates them):
 *
 *   GET /api/heatmaps                            { heatmaps: [{ stage, stream, cols, rows, windowSeconds, maxSeconds }] }
 *   GET /api/streams/:id/heatmap.png?width=&stage=&background=   the grid through a colour map, scaled (bilinear) to `width`
 *   GET /api/streams/:id/heatmap.json?stage=     the cells themselves (seconds)
 *
 * Read endpoints (public unless `publicMetrics: false`). The PNG is
 * transparent where nobody stood, so the live page lays it over the
 * preview; `background=1` gives an opaque one (black where nobody stood).
 */
import * as v from "valibot";
import type { Hono } from "hono";
import { encode } from "fast-png";
import type { HeatmapGrid, HeatmapSource } from "../../core/operator.ts";
import { httpError, type RouteDeps } from "./routes.ts";

const StreamId = v.pipe(v.string(), v.regex(/^[\w-]{1,64}$/, "expected a stream id"));
const Query = v.object({
  stage: v.optional(v.pipe(v.string(), v.regex(/^[\w-]{1,64}$/, "expected a stage id"))),
  width: v.optional(v.pipe(v.string(), v.regex(/^\d{1,4}$/, "expected a number"), v.transform(Number), v.minValue(16), v.maxValue(2048))),
  background: v.optional(v.picklist(["0", "1"]), "0"),
});

/** The colour map at 0, ¼, ½, ¾ and 1: blue, cyan, green, yellow, red (the usual heatmap ramp). */
const STOPS: [number, number, number][] = [
  [40, 60, 255],
  [0, 220, 255],
  [40, 230, 60],
  [255, 230, 0],
  [255, 30, 0],
];

/** The colour map at t in [0, 1]. */
function colour(t: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const a = STOPS[i];
  const b = STOPS[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

/** The grid smoothed with a 3 × 3 binomial kernel (1 2 1), edges clamped: cells blend into blobs. */
function smooth(g: HeatmapGrid): Float32Array {
  const { cols, rows, cells } = g;
  const out = new Float32Array(cells.length);
  const w = [1, 2, 1];
  for (let y = 0; y < rows; y++)
    for (let x = 0; x < cols; x++) {
      let sum = 0;
      for (let dy = -1; dy <= 1; dy++)
        for (let dx = -1; dx <= 1; dx++) sum += w[dy + 1] * w[dx + 1] * cells[Math.min(rows - 1, Math.max(0, y + dy)) * cols + Math.min(cols - 1, Math.max(0, x + dx))];
      out[y * cols + x] = sum / 16;
    }
  return out;
}

/**
 * The heatmap as an RGBA PNG `width` pixels wide (the grid's aspect ratio):
 * the grid smoothed (3 × 3), each cell's share of the busiest one,
 * square-rooted so that short visits show, through a blue-to-red colour
 * map; bilinear between cell centres. Transparent where nobody stood (and
 * at least 25 % opaque where anybody did) unless `background`.
 * @example
 * const png = heatmapPng(source.grid("cam")!, 640, false); // Uint8Array, image/png
 */
export function heatmapPng(g: HeatmapGrid, width: number, background: boolean): Uint8Array {
  const height = Math.max(1, Math.round((width * g.rows) / g.cols));
  const cells = smooth(g);
  let max = 0;
  for (const c of cells) if (c > max) max = c;
  const norm = new Float32Array(cells.length);
  if (max > 0) for (let i = 0; i < norm.length; i++) norm[i] = Math.sqrt(cells[i] / max);
  const data = new Uint8Array(width * height * 4);
  const at = (cx: number, cy: number) => norm[Math.min(g.rows - 1, Math.max(0, cy)) * g.cols + Math.min(g.cols - 1, Math.max(0, cx))];
  for (let y = 0, k = 0; y < height; y++) {
    const gy = ((y + 0.5) * g.rows) / height - 0.5;
    const y0 = Math.floor(gy);
    const fy = gy - y0;
    for (let x = 0; x < width; x++, k += 4) {
      const gx = ((x + 0.5) * g.cols) / width - 0.5;
      const x0 = Math.floor(gx);
      const fx = gx - x0;
      const t = (at(x0, y0) * (1 - fx) + at(x0 + 1, y0) * fx) * (1 - fy) + (at(x0, y0 + 1) * (1 - fx) + at(x0 + 1, y0 + 1) * fx) * fy;
      const [r, gr, b] = background && t <= 0 ? [0, 0, 0] : colour(t);
      data[k] = r;
      data[k + 1] = gr;
      data[k + 2] = b;
      data[k + 3] = background ? 255 : t <= 0 ? 0 : Math.round(255 * Math.min(1, 0.25 + 0.75 * t));
    }
  }
  return encode({ width, height, data, channels: 4, depth: 8 });
}

/**
 * Adds the heatmap routes to the app.
 * @example
 * registerHeatmapRoutes(app, { view, read, control, limit, log });
 */
export function registerHeatmapRoutes(app: Hono, d: RouteDeps): void {
  const sources = () => d.view.exec.live().flatMap((s) => (s.instance.heatmap ? [{ stage: s.id, source: s.instance.heatmap as HeatmapSource }] : []));
  const find = (stream: string, stage?: string): { stage: string; grid: HeatmapGrid } => {
    const all = sources();
    if (!all.length) throw httpError(404, "no heatmap stage in this process");
    const pool = stage ? all.filter((s) => s.stage === stage) : all;
    if (stage && !pool.length) throw httpError(404, `no heatmap stage "${stage}" here (heatmap stages: ${all.map((s) => s.stage).join(", ")})`);
    for (const s of pool) {
      const grid = s.source.grid(stream);
      if (grid) return { stage: s.stage, grid };
    }
    throw httpError(404, `no heatmap of stream "${stream}" yet`);
  };
  const params = (id: string, query: Record<string, string>) => {
    const sid = v.safeParse(StreamId, id);
    if (!sid.success) throw httpError(400, `stream: ${sid.issues[0].message}`);
    const q = v.safeParse(Query, query);
    if (!q.success) throw httpError(400, `invalid query: ${q.issues.map((i) => `${v.getDotPath(i) ?? "query"}: ${i.message}`).join("; ")}`);
    return { stream: sid.output, ...q.output };
  };
  const maxOf = (g: HeatmapGrid) => g.cells.reduce((m, c) => (c > m ? c : m), 0);

  app.get("/api/heatmaps", d.read, (c) =>
    c.json({
      heatmaps: sources().flatMap(({ stage, source }) =>
        source.streams().flatMap((stream) => {
          const g = source.grid(stream);
          return g ? [{ stage, stream, cols: g.cols, rows: g.rows, windowSeconds: g.windowSeconds, maxSeconds: Math.round(maxOf(g) * 100) / 100 }] : [];
        }),
      ),
    }),
  );
  app.get("/api/streams/:id/heatmap.png", d.read, (c) => {
    const p = params(c.req.param("id"), c.req.query());
    const { grid } = find(p.stream, p.stage);
    const png = heatmapPng(grid, p.width ?? grid.cols * 10, p.background === "1");
    return c.body(png as Uint8Array<ArrayBuffer>, 200, { "content-type": "image/png", "cache-control": "no-store" });
  });
  app.get("/api/streams/:id/heatmap.json", d.read, (c) => {
    const p = params(c.req.param("id"), c.req.query());
    const { stage, grid } = find(p.stream, p.stage);
    const total = grid.cells.reduce((s, x) => s + x, 0);
    return c.json({
      stream: p.stream,
      stage,
      cols: grid.cols,
      rows: grid.rows,
      windowSeconds: grid.windowSeconds,
      updated: grid.updated,
      maxSeconds: Math.round(maxOf(grid) * 1000) / 1000,
      totalSeconds: Math.round(total * 1000) / 1000,
      cells: Array.from(grid.cells, (x) => Math.round(x * 1000) / 1000),
    });
  });
}
