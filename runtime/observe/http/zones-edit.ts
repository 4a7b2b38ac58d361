/**
 * The counting lines and zones of `zones` stages over HTTP, for the live
 * page's editor (operators/zones.ts keeps them):
 *
 *   GET /api/zones                         every zones stage: its streams' lines, zones and totals
 *   GET /api/zones/:stage/streams/:id      one stream's { stage, stream, lines, zones, counts }
 *   PUT /api/zones/:stage/streams/:id      { lines, zones }: new geometry for that stream, totals kept   control
 *
 * Coordinates are normalised (0..1, y down) as in the pipeline file. A PUT
 * needs the bearer token; its body is checked here for shape and by the
 * stage for the options' rules (unique ids, 3+ points, distinct line ends):
 * 400 naming the field. The change lasts until the process restarts: the
 * editor shows the YAML to paste into the file.
 */
import * as v from "valibot";
import type { Hono } from "hono";
import { FramewireError } from "../../core/errors.ts";
import type { GeometryControl, StreamGeometry } from "../../core/operator.ts";
import { httpError, readJson, type RouteDeps } from "./routes.ts";

const Id = v.pipe(v.string(), v.regex(/^[\w-]{1,64}$/, "expected an id of letters, digits, _ and -"));
const Point = v.tuple([v.number(), v.number()]);
/** The body of a PUT: its shape (the stage checks the rest). */
export const GeometryBody = v.strictObject({
  lines: v.optional(v.pipe(v.array(v.strictObject({ id: v.string(), from: Point, to: Point })), v.maxLength(64)), []),
  zones: v.optional(v.pipe(v.array(v.strictObject({ id: v.string(), polygon: v.pipe(v.array(Point), v.maxLength(256)) })), v.maxLength(64)), []),
});

const issues = (r: { issues: v.BaseIssue<unknown>[] }) => r.issues.map((i) => `${v.getDotPath(i) ?? "(body)"}: ${i.message}`).join("; ");

/**
 * Adds the zone geometry routes to the app.
 * @example
 * registerZoneRoutes(app, { view, read, control, limit, log });
 */
export function registerZoneRoutes(app: Hono, d: RouteDeps): void {
  const stages = () => d.view.exec.live().flatMap((s) => (s.instance.geometry ? [{ stage: s.id, control: s.instance.geometry as GeometryControl }] : []));
  const target = (stage: string, stream: string) => {
    const sid = v.safeParse(Id, stream);
    if (!sid.success) throw httpError(400, `stream: ${sid.issues[0].message}`);
    const all = stages();
    const s = all.find((x) => x.stage === stage);
    if (!s) throw httpError(404, `no zones stage "${stage}" in this process${all.length ? ` (zones stages: ${all.map((x) => x.stage).join(", ")})` : ""}`);
    return { ...s, stream: sid.output };
  };
  const answer = (stage: string, stream: string, g: StreamGeometry) => ({ stage, stream, ...g.geometry, counts: g.counts });

  app.get("/api/zones", d.read, (c) =>
    c.json({ stages: stages().map(({ stage, control }) => ({ stage, streams: control.streams().map((stream) => answer(stage, stream, control.get(stream))) })) }),
  );
  app.get("/api/zones/:stage/streams/:id", d.read, (c) => {
    const t = target(c.req.param("stage"), c.req.param("id"));
    return c.json(answer(t.stage, t.stream, t.control.get(t.stream)));
  });
  app.put("/api/zones/:stage/streams/:id", d.control, d.limit, async (c) => {
    const t = target(c.req.param("stage"), c.req.param("id"));
    const body = v.safeParse(GeometryBody, await readJson(c.req.raw), { abortEarly: false });
    if (!body.success) throw httpError(400, `invalid body: ${issues(body)}`);
    let result: StreamGeometry;
    try {
      result = t.control.set(t.stream, body.output);
    } catch (err) {
      if (err instanceof FramewireError && err.code === "E_GEOMETRY") throw httpError(400, err.message);
      throw err;
    }
    d.log.info(`zones of ${t.stream} in ${t.stage} changed over HTTP`);
    return c.json(answer(t.stage, t.stream, result));
  });
}
