/**
 * Pipeline files are bounded: one over 1 MiB is refused before it is parsed
 * (read no further than the limit), and a huge value in a smaller file is
 * quoted cut short in its error, never whole.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PipelineFileError } from "../runtime/core/errors.ts";
import { loadPipeline, MAX_PIPELINE_FILE_BYTES, suggest } from "../runtime/spec/loader.ts";
import { loadRegistry, type Registry } from "../runtime/spec/registry.ts";
import { tempDir } from "./support/paths.ts";
import { parseError } from "./support/pipeline.ts";

let tmp: Awaited<ReturnType<typeof tempDir>>;
let registry: Registry;
beforeAll(async () => {
  tmp = await tempDir("framewire-big-pipeline-");
  registry = await loadRegistry();
});
afterAll(() => tmp?.remove());

const VALID = `name: big
stages:
  - id: cam
    use: ingest
    with: { url: "rtsp://cam/1" }
  - id: out
    use: sink-log
`;

async function loadError(file: string): Promise<PipelineFileError> {
  const err = await loadPipeline(file, registry).then(() => undefined, (e: unknown) => e);
  if (!(err instanceof PipelineFileError)) throw new Error(`expected a PipelineFileError, got ${String(err)}`);
  return err;
}

describe("pipeline file size", () => {
  test("a file over 1 MiB is refused unparsed, with the file and the limit in the error", async () => {
    // Otherwise valid: only its size is wrong (a 2 MiB comment).
    const file = join(tmp.path, "huge.yaml");
    await writeFile(file, `${VALID}# ${"x".repeat(2 * 1024 * 1024)}\n`);
    const err = await loadError(file);
    expect(err.code).toBe("E_PIPELINE_FILE");
    expect(err.message).toBe(`${file}:1:1: the file is ${2 * 1024 * 1024 + VALID.length + 3} bytes, over the 1 MiB (1048576 bytes) limit for pipeline files`);
    // A file just under the limit still loads.
    await writeFile(file, `${VALID}# ${"x".repeat(MAX_PIPELINE_FILE_BYTES - VALID.length - 10)}\n`);
    expect((await loadPipeline(file, registry)).name).toBe("big");
  });

  test("text from a pipe or device is read no further than the limit", async () => {
    const err = await loadError("/dev/zero");
    expect(err.message).toBe(`/dev/zero:1:1: the file is more than ${MAX_PIPELINE_FILE_BYTES} bytes, over the 1 MiB (1048576 bytes) limit for pipeline files`);
  });
});

describe("values in errors", () => {
  test("a 500 000-character value of the wrong type is quoted cut short, saying how long it was", async () => {
    const file = join(tmp.path, "value.yaml");
    const value = "y".repeat(500_000);
    await writeFile(file, VALID.replace("use: sink-log", `use: sink-log\n    inbox: "${value}"`));
    const err = await loadError(file);
    expect(err.message.length).toBeLessThan(400);
    expect(err.message).toContain(`stages[1].inbox: expected number, got "${"y".repeat(79)}… (500002 characters)`);
  });

  test("a huge operator name is cut short and not compared with every known name", () => {
    const name = "z".repeat(200_000);
    const err = parseError(VALID.replace("use: sink-log", `use: ${name}`), registry);
    expect(err.message.length).toBeLessThan(2000);
    expect(err.message).toContain(`unknown operator "${"z".repeat(80)}… (200000 characters)"`);
    expect(suggest(name, ["sink-log"])).toBeUndefined();
  });
});
