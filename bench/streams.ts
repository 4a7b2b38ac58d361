/**
 * `bun run bench streams`: 1, 2, 4 and 8 live cameras (the shipped clip,
 * realtime, 10 fps each) in one ingest stage on one node, through resize,
 * infer-onnx and nms: total processed fps against the single-stream limit,
 * each stream's share, p99 end-to-end latency and peak RSS per camera.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { projectRoot } from "../runtime/platform/paths.ts";
import { fmt, markdownTable } from "./table.ts";

const CLIP = join(projectRoot, "pipelines/media/vtest.mp4");
const SECONDS = 20;

interface Result {
  fps: number;
  perStream: Map<string, number>;
  e2eP99: number;
  peakRssMiB: number;
}

function pipeline(dir: string, streams: string[], realtime: boolean): string {
  const list = streams.map((id) => `        - { id: ${id}, url: "${CLIP}" }`).join("\n");
  return `name: bench
stages:
  - id: cams
    use: ingest
    with:
      realtime: ${realtime}
      loop: ${realtime}
      fps: 10
      state: ${join(dir, "streams.json")}
      streams:
${list}
  - id: prep
    use: resize
    with: { width: 640, height: 640 }
  - id: detect
    use: infer-onnx
    with: { model: yolov5n.onnx }
  - id: nms
    use: nms
  - id: out
    use: sink-jsonl
    with: { path: ${join(dir, "out.jsonl")} }
`;
}

/** Runs the pipeline for `seconds` (live) or `frames` (file, as fast as it goes); reads the results. */
async function run(n: number, realtime: boolean, frames?: number): Promise<Result> {
  const dir = await mkdtemp(join(tmpdir(), "fw-bench-streams-"));
  try {
    const file = join(dir, "p.yaml");
    await writeFile(file, pipeline(dir, Array.from({ length: n }, (_, i) => `cam${i + 1}`), realtime));
    const args = ["bun", join(projectRoot, "runtime/cli.ts"), "run", file, "--json", ...(frames ? ["--frames", String(frames)] : [])];
    const proc = Bun.spawn(args, { stdout: "pipe", stderr: "pipe", env: { ...process.env, FRAMEWIRE_LOG: "warn" } });
    const t0 = performance.now();
    if (!frames) setTimeout(() => proc.kill("SIGINT"), SECONDS * 1000);
    const [out] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    await proc.exited;
    const seconds = (performance.now() - t0) / 1000;
    const s = JSON.parse(out.trim().split("\n").at(-1)!);
    const perStream = new Map<string, number>();
    for (const line of (await readFile(join(dir, "out.jsonl"), "utf8")).trim().split("\n")) {
      const r = JSON.parse(line);
      if (r.detections) perStream.set(r.stream, (perStream.get(r.stream) ?? 0) + 1);
    }
    const sink = s.stages.find((x: { stage: string }) => x.stage === "out");
    const total = [...perStream.values()].reduce((a, b) => a + b, 0);
    return { fps: total / (frames ? seconds : SECONDS), perStream, e2eP99: sink?.e2eP99 ?? NaN, peakRssMiB: s.peakRssMiB };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function benchStreams(): Promise<string> {
  const limit = await run(1, false, 200);
  const rows: (string | number)[][] = [];
  let rss1 = 0;
  for (const n of [1, 2, 4, 8]) {
    const r = await run(n, true);
    if (n === 1) rss1 = r.peakRssMiB;
    const shares = [...r.perStream.values()];
    const mean = shares.reduce((a, b) => a + b, 0) / Math.max(1, shares.length);
    const offered = 10 * n;
    const expected = Math.min(offered, limit.fps);
    rows.push([
      n,
      offered,
      fmt(r.fps),
      `${fmt(r.fps / expected, 2)}×`,
      `${fmt((Math.min(...shares) / mean - 1) * 100, 0)}% / +${fmt((Math.max(...shares) / mean - 1) * 100, 0)}%`,
      fmt(r.e2eP99, 0),
      fmt(r.peakRssMiB, 0),
      n === 1 ? "–" : fmt((r.peakRssMiB - rss1) / (n - 1), 1),
    ]);
  }
  return `## streams — live cameras in one ingest stage (vtest.mp4, realtime, 10 fps each; ${SECONDS} s a row)

Single-stream limit (the same chain on the file as fast as it goes): ${fmt(limit.fps)} fps.

${markdownTable(["cameras", "offered fps", "processed fps", "vs min(offered, limit)", "min / max share vs equal", "p99 end-to-end ms", "peak RSS MiB", "MiB per added camera"], rows)}

Targets: processed ≥ 0.9× min(offered, limit); shares within ±10%; p99 flat (bounded by the inboxes: live frames beyond them are dropped, per camera).
`;
}
