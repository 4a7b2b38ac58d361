import * as v from "valibot";
import { ConfigError } from "../runtime/core/errors.ts";
import { hostLoad } from "../runtime/platform/host-load.ts";
import { describeIssue, formatPath } from "../runtime/spec/issues.ts";
import { derive, type Frame } from "../runtime/core/message.ts";
import { defineOperator, type OperatorMetric, type TransformDefinition, type TransformInstance } from "../runtime/core/operator.ts";
import { which } from "../runtime/platform/index.ts";

/** Operators a variant may use: each attaches `frame.predictions` from `frame.tensor`. */
const VARIANT_OPERATORS = ["infer-onnx", "infer-triton"] as const;

const share = (text: string) => v.optional(v.pipe(v.number(), v.gtValue(0), v.maxValue(1), v.description(text)));

const When = v.strictObject({
  maxInflight: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(1),
      v.description("Most frames this stage runs on the variant at once (give the stage `replicas` > 1 so frames overlap)."),
    ),
  ),
  maxLatencyMs: v.optional(
    v.pipe(v.number(), v.gtValue(0), v.description("Recent latency (moving average, ms) above which the variant counts as saturated.")),
  ),
  maxCpu: share("Host CPU utilisation (0..1) above which the variant counts as saturated."),
  maxGpu: share(
    "Busiest GPU's utilisation (0..1, from nvidia-smi) above which the variant counts as saturated; not checked where no GPU can be read.",
  ),
});
export type Conditions = v.InferOutput<typeof When>;

const Variant = v.strictObject({
  id: v.pipe(
    v.string(),
    v.regex(/^[A-Za-z][\w-]*$/, "expected an id of letters, digits, _ and -"),
    v.description("Name in logs, metrics and frame.timings."),
  ),
  use: v.pipe(v.picklist(VARIANT_OPERATORS), v.description("The inference operator this variant runs.")),
  with: v.optional(v.pipe(v.record(v.string(), v.unknown()), v.description("That operator's options (checked against its schema).")), {}),
  when: v.optional(v.pipe(When, v.description("Load limits under which the variant is used; none: always eligible.")), {}),
});

const Options = v.strictObject({
  variants: v.pipe(
    v.array(Variant),
    v.minLength(1, "expected at least one variant"),
    v.check((vs) => new Set(vs.map((x) => x.id)).size === vs.length, "variant ids must be unique"),
    v.description("Model variants in order of preference; each frame goes to the first whose `when` holds, else to the least saturated."),
  ),
  cooldown: v.optional(
    v.pipe(
      v.number(),
      v.minValue(0),
      v.maxValue(3600),
      v.description(
        "Seconds a failed variant is skipped; also the age after which a latency reading is stale and the variant gets a probe frame.",
      ),
    ),
    5,
  ),
});

/** What the policy knows of one variant at the moment a frame is routed. */
export interface VariantLoad {
  /** Frames of this stage running on it now. */
  inflight: number;
  /** Moving average of its recent latency, and when it was last updated (performance.now() ms). */
  latencyMs?: number;
  latencyAt?: number;
  /** It failed: skipped until then (performance.now() ms). */
  coolUntil: number;
  /** False while its operator could not be created. */
  available: boolean;
}

export interface HostReading {
  /** 0..1 */
  cpu: number;
  /** Busiest GPU, 0..1; null where none can be read. */
  gpu: number | null;
}

export interface Ranked {
  index: number;
  /** Its conditions hold and it is not cooling down after a failure. */
  eligible: boolean;
  /** Measured / limit of its most loaded condition (≤ 1 when within limits). */
  pressure: number;
  /** Why it is not eligible ("" when it is). */
  why: string;
}

const pct = (x: number) => `${Math.round(x * 100)}%`;

/**
 * The routing policy: every available variant, in the order a frame should
 * try them. Eligible ones first, in declared (preference) order; then the
 * saturated ones, least saturated first; then those cooling down after a
 * failure, the one back soonest first. A stale latency reading (older than
 * `staleMs`) does not count, so a variant skipped for slowness gets probed.
 * @example
 * rankVariants([{ maxInflight: 1 }, {}], [{ inflight: 1, coolUntil: 0, available: true }, { inflight: 0, coolUntil: 0, available: true }], { cpu: 0.2, gpu: null }, performance.now(), 5000);
 * // → [{ index: 1, eligible: true, ... }, { index: 0, eligible: false, why: "1 in flight (max 1)", ... }]
 */
export function rankVariants(when: Conditions[], loads: VariantLoad[], host: HostReading, now: number, staleMs: number): Ranked[] {
  const out: (Ranked & { group: number; coolUntil: number })[] = [];
  loads.forEach((l, index) => {
    if (!l.available) return;
    const w = when[index];
    const checks: [number, string][] = [[0, ""]];
    if (w.maxInflight) checks.push([(l.inflight + 1) / w.maxInflight, `${l.inflight} in flight (max ${w.maxInflight})`]);
    if (w.maxLatencyMs && l.latencyMs !== undefined && now - (l.latencyAt ?? 0) <= staleMs) {
      checks.push([l.latencyMs / w.maxLatencyMs, `latency ${l.latencyMs.toFixed(0)} ms (max ${w.maxLatencyMs})`]);
    }
    if (w.maxCpu) checks.push([host.cpu / w.maxCpu, `CPU ${pct(host.cpu)} (max ${pct(w.maxCpu)})`]);
    if (w.maxGpu && host.gpu !== null) checks.push([host.gpu / w.maxGpu, `GPU ${pct(host.gpu)} (max ${pct(w.maxGpu)})`]);
    const [pressure, reason] = checks.reduce((a, c) => (c[0] > a[0] ? c : a));
    const cooling = l.coolUntil > now;
    const eligible = !cooling && pressure <= 1;
    const why = cooling ? `failed recently, back in ${((l.coolUntil - now) / 1000).toFixed(1)} s` : eligible ? "" : reason;
    out.push({ index, eligible, pressure, why, group: eligible ? 0 : cooling ? 2 : 1, coolUntil: l.coolUntil });
  });
  out.sort(
    (a, b) =>
      a.group - b.group ||
      (a.group === 1 ? a.pressure - b.pressure : 0) ||
      (a.group === 2 ? a.coolUntil - b.coolUntil : 0) ||
      a.index - b.index,
  );
  return out.map(({ index, eligible, pressure, why }) => ({ index, eligible, pressure, why }));
}

/** Weight of the newest latency in the moving average. */
const LATENCY_ALPHA = 0.3;
/** At most one "switched variant" log line per this many ms; the rest are counted into the next. */
const SWITCH_LOG_MS = 1000;

interface VariantState {
  id: string;
  use: string;
  when: Conditions;
  instance?: TransformInstance;
  load: VariantLoad;
  starting: boolean;
  /** When to try creating it again after it failed to start. */
  retryAt: number;
  frames: number;
  failures: number;
}

/**
 * Load-based dispatch over model variants (the seed's dynamic_dispatch):
 * e.g. a remote Triton GPU, a local ONNX CPU model and a lighter model.
 * Each frame goes to the first variant whose load conditions hold, falls
 * back to the next when it fails, and says in `frame.timings["<stage>@<variant>"]`
 * which one ran.
 */
export default defineOperator({
  name: "infer-dispatch",
  kind: "transform",
  description:
    "Pick a model variant (infer-triton, infer-onnx, ...) per frame by live load (in flight, latency, CPU/GPU) with fallback on failure.",
  options: Options,
  async create(o, ctx) {
    const known = ctx.operators;
    if (!known) throw new ConfigError(`${ctx.stage}: infer-dispatch needs the pipeline's operators (run it in a pipeline)`);
    const defs = o.variants.map((vr, i) => {
      const def = known.get(vr.use) as TransformDefinition;
      const r = v.safeParse(def.options, vr.with, { abortEarly: false });
      if (!r.success) {
        const lines = r.issues.map(
          (is) =>
            `${formatPath(["variants", i, "with", ...(is.path ?? []).map((p) => p.key as string)])}: ${describeIssue(is, def.options)}`,
        );
        throw new ConfigError(`${ctx.stage}: ${lines.join("; ")}`);
      }
      return { def, options: r.output };
    });
    const states: VariantState[] = o.variants.map((vr) => ({
      id: vr.id,
      use: vr.use,
      when: vr.when,
      load: { inflight: 0, coolUntil: 0, available: false },
      starting: false,
      retryAt: 0,
      frames: 0,
      failures: 0,
    }));
    const cooldownMs = o.cooldown * 1000;
    let closed = false;

    const start = async (i: number) => {
      const s = states[i];
      s.starting = true;
      try {
        const inst = await defs[i].def.create(defs[i].options, { ...ctx, stage: `${ctx.stage}/${s.id}`, log: ctx.log.child(s.id) });
        if (closed) await inst.close?.();
        else [s.instance, s.load.available] = [inst, true];
      } catch (err) {
        s.retryAt = performance.now() + cooldownMs;
        throw err;
      } finally {
        s.starting = false;
      }
    };
    const started = await Promise.allSettled(states.map((_, i) => start(i)));
    const failed = started.flatMap((r, i) => (r.status === "rejected" ? [{ s: states[i], err: r.reason as Error }] : []));
    const misconfigured = failed.find((x) => x.err instanceof ConfigError);
    if (misconfigured || failed.length === states.length) {
      closed = true;
      await Promise.all(states.map((s) => s.instance?.close?.()));
      const why = failed.map((x) => `variant ${x.s.id} (${x.s.use}): ${x.err.message}`).join("; ");
      throw misconfigured
        ? new ConfigError(`${ctx.stage}: variant ${misconfigured.s.id} (${misconfigured.s.use}): ${misconfigured.err.message}`)
        : new Error(`no variant could start: ${why}`);
    }
    // Unreachable servers are not fatal: the other variants run and the missing one is retried.
    for (const { s, err } of failed)
      ctx.log.warn(`variant ${s.id} could not start (${err.message}); retrying every ${o.cooldown} s, the others run meanwhile`);

    const releaseLoad = hostLoad.acquire();
    if (o.variants.some((x) => x.when.maxGpu !== undefined) && !which("nvidia-smi")) {
      ctx.log.warn("no GPU utilisation can be read here (no nvidia-smi): maxGpu conditions are not checked");
    }
    const describeWhen = (w: Conditions) =>
      Object.entries(w)
        .map(([k, x]) => `${k} ${x}`)
        .join(", ") || "always";
    ctx.log.info(`variants by preference: ${states.map((s) => `${s.id} (${s.use}; ${describeWhen(s.when)})`).join(" → ")}`);

    let current: string | undefined;
    let lastSwitchLog = -Infinity;
    let unlogged = 0;
    const noteChoice = (ranked: Ranked[], now: number) => {
      const chosen = states[ranked[0].index];
      if (chosen.id === current) return;
      const first = current === undefined;
      current = chosen.id;
      if (first) {
        ctx.log.info(`→ ${chosen.id}`);
        return;
      }
      if (now - lastSwitchLog < SWITCH_LOG_MS) {
        unlogged++;
        return;
      }
      const skipped = ranked.filter((r) => r.index < ranked[0].index && r.why).map((r) => `${states[r.index].id}: ${r.why}`);
      if (!ranked[0].eligible) skipped.push(`all saturated, ${chosen.id} least`);
      const more = unlogged ? ` (+${unlogged} switches in the last second)` : "";
      ctx.log.info(`→ ${chosen.id}${skipped.length ? ` (${skipped.join("; ")})` : ""}${more}`);
      [lastSwitchLog, unlogged] = [now, 0];
    };

    return {
      async process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        const now = performance.now();
        states.forEach((s, i) => {
          if (s.instance || s.starting || closed || now < s.retryAt) return;
          start(i).then(
            () => ctx.log.info(`variant ${s.id} started`),
            (err: Error) => ctx.log.debug(`variant ${s.id} still cannot start: ${err.message}`),
          );
        });
        const gpus = hostLoad.latest.gpus;
        const host: HostReading = { cpu: hostLoad.latest.hostCpu, gpu: gpus ? Math.max(...gpus.map((g) => g.utilisation)) : null };
        const ranked = rankVariants(
          states.map((s) => s.when),
          states.map((s) => s.load),
          host,
          now,
          cooldownMs,
        );
        if (!ranked.length) throw new Error(`no variant of ${ctx.stage} is running yet (retrying their start every ${o.cooldown} s)`);
        noteChoice(ranked, now);
        const errors: string[] = [];
        for (const r of ranked) {
          const s = states[r.index];
          const t0 = performance.now();
          s.load.inflight++;
          try {
            const out = await s.instance!.process(f);
            const t1 = performance.now();
            const ms = t1 - t0;
            s.load.latencyMs = s.load.latencyMs === undefined ? ms : LATENCY_ALPHA * ms + (1 - LATENCY_ALPHA) * s.load.latencyMs;
            s.load.latencyAt = t1;
            s.load.coolUntil = 0;
            s.frames++;
            // Which variant ran, and how long: on a new frame (the variant's output is frozen).
            return out && !Array.isArray(out) && out.kind === "frame"
              ? derive(out, { timings: { ...out.timings, [`${ctx.stage}@${s.id}`]: ms } })
              : out;
          } catch (err) {
            const message = (err as Error).message;
            errors.push(`${s.id}: ${message}`);
            s.failures++;
            const wasCooling = s.load.coolUntil > t0;
            s.load.coolUntil = performance.now() + cooldownMs;
            if (!wasCooling) ctx.log.warn(`variant ${s.id} failed on ${f.stream}#${f.seq} (${message}); skipping it for ${o.cooldown} s`);
          } finally {
            s.load.inflight--;
          }
        }
        throw new Error(`every variant failed for ${f.stream}#${f.seq}: ${errors.join("; ")}`);
      },
      metrics: (): OperatorMetric[] =>
        states.flatMap((s) => [
          { name: "dispatch_frames_total", help: "Frames a variant ran.", type: "counter", value: s.frames, labels: { variant: s.id } },
          {
            name: "dispatch_failures_total",
            help: "Frames a variant failed (each then tried the next).",
            type: "counter",
            value: s.failures,
            labels: { variant: s.id },
          },
          {
            name: "dispatch_inflight",
            help: "Frames running on a variant now.",
            type: "gauge",
            value: s.load.inflight,
            labels: { variant: s.id },
          },
          // The variant's own metrics (retries of infer-triton, ...), told apart by variant.
          ...(s.instance?.metrics?.() ?? []).map((m) => ({ ...m, labels: { ...m.labels, variant: s.id } })),
        ]),
      async close() {
        closed = true;
        releaseLoad();
        await Promise.all(states.map((s) => s.instance?.close?.()));
      },
    };
  },
});
