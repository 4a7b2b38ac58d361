/** Which ffmpeg framewire runs (a system ffmpeg ≥ 5 before the shipped 2018 build), and the log saying so. */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { describeFfmpeg, findFfmpeg, MIN_SYSTEM_FFMPEG, probeFfmpeg, shippedFfmpeg } from "../runtime/media/ffmpeg.ts";
import { which } from "../runtime/platform/index.ts";
import { makeSource } from "./support/operators.ts";
import { busImage, repoRoot } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";

setDefaultTimeout(60_000);

describe("ffmpeg", () => {
  test("the shipped build is found and reads as the 4.x line (a git snapshot, told by its libavcodec)", () => {
    const shipped = shippedFfmpeg();
    expect(shipped).toBeDefined();
    const info = probeFfmpeg(shipped!)!;
    expect(info.version).toMatch(/^N-\d+/);
    expect(info.major).toBe(4);
    expect(describeFfmpeg(shipped!)).toContain("release 4.x (shipped,");
  });

  test("a system ffmpeg of 5 or newer is preferred; otherwise the shipped one runs", () => {
    const system = which("ffmpeg");
    const systemInfo = system ? probeFfmpeg(system) : undefined;
    const chosen = findFfmpeg();
    if (process.env.FRAMEWIRE_FFMPEG) expect(chosen.source).toBe("FRAMEWIRE_FFMPEG");
    else if (system && systemInfo && systemInfo.major >= MIN_SYSTEM_FFMPEG) expect(chosen).toEqual({ path: system, source: "system", ...systemInfo });
    else expect(chosen.path).toBe(shippedFfmpeg()!);
    expect(chosen.major).toBeGreaterThan(0);
  });

  test("FRAMEWIRE_FFMPEG overrides the choice", async () => {
    const shipped = shippedFfmpeg()!;
    const p = startProcess(["bun", "-e", `import { describeFfmpeg } from "${join(repoRoot, "runtime/media/ffmpeg.ts")}"; console.log(describeFfmpeg());`], {
      env: { FRAMEWIRE_FFMPEG: shipped },
    });
    expect(await p.exited).toBe(0);
    expect(p.stdout()).toContain(`release 4.x (FRAMEWIRE_FFMPEG, ${shipped})`);
  });

  test("ingest's log says which binary and version decodes", async () => {
    const { instance, log } = await makeSource("ingest", { url: busImage }, "cam");
    await instance.run(async () => {}, new AbortController().signal);
    await instance.close?.();
    const line = log.lines.find((l) => l.includes("reading "));
    expect(line).toContain(`with ${describeFfmpeg()}`);
    expect(line).toMatch(/with ffmpeg \S+.* \((system|shipped|FRAMEWIRE_FFMPEG), \//);
  });
});
