/**
 * HTTP helpers for tests: a `bun run pipeline` process with its HTTP server
 * on a free port, a strict Prometheus text-format parser, and a reader for
 * the live feed's records.
 */
import { takeRecords } from "../../web/live-records.js";
import { repoRoot } from "./paths.ts";
import { startProcess, type Child } from "./process.ts";

export interface PipelineProcess {
  child: Child;
  /** http://127.0.0.1:PORT */
  url: string;
}

/**
 * Starts `bun runtime/cli.ts run FILE --http-port 0 ...args` and waits for
 * its "listening on" line (port 0: the OS picks a free port, no race).
 */
export async function startPipelineProcess(file: string, args: string[] = [], env: Record<string, string | undefined> = {}): Promise<PipelineProcess> {
  const child = startProcess([process.execPath, "runtime/cli.ts", "run", file, "--http-port", "0", ...args], { cwd: repoRoot, env: { FRAMEWIRE_LOG: "info", ...env } });
  const m = await child.waitFor(/listening on (http:\/\/[\d.]+:\d+)/, 30_000);
  return { child, url: m[1] };
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  /** Family name → TYPE. */
  types: Map<string, string>;
  /** Samples of `name` whose labels include `match`. */
  find(name: string, match?: Record<string, string>): Sample[];
  /** The one sample of `name` matching `match`; throws when there is not exactly one. */
  value(name: string, match?: Record<string, string>): number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: -?\d+)?$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)/y;

/**
 * Parses the Prometheus text format (0.0.4) strictly: every line must be a
 * comment, blank, or a well-formed sample; every sample must belong to a
 * family with a TYPE.
 * @throws Error naming the first line that does not parse.
 */
export function parsePrometheus(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  text.split("\n").forEach((line, i) => {
    if (line === "") return;
    if (line.startsWith("#")) {
      const t = line.match(/^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/);
      if (t) types.set(t[1], t[2]);
      else if (!/^# HELP \S+ /.test(line)) throw new Error(`line ${i + 1}: unexpected comment: ${line}`);
      return;
    }
    const m = line.match(LINE);
    if (!m) throw new Error(`line ${i + 1}: not a sample: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      LABEL.lastIndex = 0;
      while (LABEL.lastIndex < m[2].length) {
        const start = LABEL.lastIndex;
        const l = LABEL.exec(m[2]);
        if (!l || LABEL.lastIndex === start) throw new Error(`line ${i + 1}: bad labels: ${m[2]}`);
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
      }
    }
    // As Prometheus reads values (Go's ParseFloat): NaN in any case (prom-client writes "Nan"), ±Inf.
    const value = /^nan$/i.test(m[3]) ? NaN : m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    if (Number.isNaN(value) && !/^nan$/i.test(m[3])) throw new Error(`line ${i + 1}: bad value: ${m[3]}`);
    const family = m[1].replace(/_(bucket|sum|count)$/, "");
    if (!types.has(m[1]) && !(types.get(family) === "histogram" || types.get(family) === "summary")) {
      throw new Error(`line ${i + 1}: ${m[1]} has no TYPE line`);
    }
    samples.push({ name: m[1], labels, value });
  });
  const matches = (s: Sample, match: Record<string, string>) => Object.entries(match).every(([k, v]) => s.labels[k] === v);
  const find = (name: string, match: Record<string, string> = {}) => samples.filter((s) => s.name === name && matches(s, match));
  return {
    samples,
    types,
    find,
    value(name, match = {}) {
      const found = find(name, match);
      if (found.length !== 1) throw new Error(`expected one ${name} ${JSON.stringify(match)}, found ${found.length}`);
      return found[0].value;
    },
  };
}

/** GET `url` and parse its metrics. */
export async function scrape(url: string, init: RequestInit = {}): Promise<Exposition> {
  const res = await fetch(`${url}/metrics`, init);
  if (!res.ok) throw new Error(`/metrics: HTTP ${res.status}`);
  return parsePrometheus(await res.text());
}

export interface LiveRecord {
  header: { type: string; [k: string]: unknown };
  jpeg: Uint8Array;
}

/** Reads live-feed records from `body` until `enough` says stop (then cancels the stream). */
export async function readLiveRecords(body: ReadableStream<Uint8Array>, enough: (records: LiveRecord[]) => boolean): Promise<LiveRecord[]> {
  const reader = body.getReader();
  const records: LiveRecord[] = [];
  let rest: Uint8Array = new Uint8Array(0);
  try {
    while (!enough(records)) {
      const { value, done } = await reader.read();
      if (done) break;
      const taken = takeRecords(rest, value);
      rest = taken.rest;
      records.push(...taken.records);
    }
  } finally {
    await reader.cancel();
  }
  return records;
}
