/**
 * Bun vs Deno: the core section's pipeline file run by the CLI under each
 * runtime as a child process, rounds alternating between them, medians
 * compared (load from elsewhere on the machine hits both alike).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { projectRoot } from "../runtime/platform/paths.ts";
import { existsSync, spawn } from "../runtime/platform/index.ts";
import { fmt, markdownTable } from "./table.ts";

const CLI = join(projectRoot, "runtime/cli.ts");
/** The deno npm package's binary, linked by scripts/setup.sh (README, Deno). */
const DENO = join(projectRoot, "node_modules/.bin/deno");

interface Runtime {
  name: string;
  /** The command line that runs a TypeScript file with every permission. */
  run: string[];
}

interface Run {
  fps: number;
  framesOut: number;
  peakRssMiB: number;
  detectP50: number;
}

/** Runs `cmd` to the end; throws with its stderr when it fails. */
async function output(cmd: string[]): Promise<string> {
  const p = spawn(cmd[0], cmd.slice(1), { env: { FRAMEWIRE_LOG: "warn" } });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} failed (exit ${code}):\n${err.slice(-2000)}`);
  return out;
}

async function pipeline(rt: Runtime, file: string, n: number): Promise<Run> {
  const out = await output([...rt.run, CLI, "run", file, "--frames", String(n), "--json"]);
  const s = JSON.parse(out.trim().split("\n").at(-1)!);
  const detect = (s.stages as { operator: string; p50: number }[]).find((x) => x.operator === "infer-onnx")!;
  return { fps: s.fps, framesOut: s.framesOut, peakRssMiB: s.peakRssMiB, detectP50: detect.p50 };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Runs the runtime comparison and returns its markdown section. */
export async function benchRuntimes(n = 200, rounds = 3): Promise<string> {
  const title = "## runtimes: the core pipeline under Bun and Deno\n\n";
  if (!existsSync(DENO)) return `${title}skipped: no ${DENO} (run scripts/setup.sh)\n`;
  const runtimes: Runtime[] = [
    { name: `bun ${(await output(["bun", "--version"])).trim()}`, run: ["bun"] },
    { name: (await output([DENO, "--version"])).split(" (")[0], run: [DENO, "run", "-A"] },
  ];
  const dir = mkdtempSync(join(tmpdir(), "framewire-bench-runtimes-"));
  try {
    const file = join(dir, "core.yaml");
    // The core section's pipeline.
    writeFileSync(
      file,
      `name: core
stages:
  - { id: cam, use: ingest, with: { url: "${join(projectRoot, "pipelines/media/vtest.mp4")}" } }
  - { id: prep, use: resize, with: { width: 640, height: 640 } }
  - { id: detect, use: infer-onnx, with: { model: yolov5n.onnx } }
  - { id: nms, use: nms }
  - { id: out, use: sink-jsonl, with: { path: "${join(dir, "out.jsonl")}" } }
`,
    );
    const runs: Run[][] = runtimes.map(() => []);
    for (let r = 0; r < rounds; r++) {
      // Who goes first alternates too, so neither always inherits a warm page cache.
      const order = r % 2 === 0 ? [0, 1] : [1, 0];
      for (const i of order) runs[i].push(await pipeline(runtimes[i], file, n));
    }
    const med = runs.map((rs) => rs.find((x) => x.fps === median(rs.map((y) => y.fps)))!);
    const table = markdownTable(
      ["runtime", `fps (median of ${rounds})`, "infer-onnx p50 ms", "frames out", "peak RSS"],
      [
        ...runtimes.map((rt, i) => [rt.name, fmt(med[i].fps), fmt(med[i].detectP50), med[i].framesOut, `${fmt(med[i].peakRssMiB, 0)} MiB`]),
        ["**deno / bun**", `**${fmt(med[1].fps / med[0].fps, 2)}×**`, "", "", ""],
      ],
    );
    return `${title}ingest → resize → infer-onnx → nms → sink-jsonl, ${n} frames, \`runtime/cli.ts run --json\` as a child process.\n\n${table}\n`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
