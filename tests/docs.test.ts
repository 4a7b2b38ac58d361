/** docs/operators.md is generated from the operators' schemas; it must match them. */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { operatorsMarkdown, optionDocs } from "../runtime/spec/schema-doc.ts";
import { repoRoot } from "./support/paths.ts";

test("docs/operators.md matches the schemas (run `bun run docs` after changing an operator)", async () => {
  const defs = [...(await loadRegistry()).values()];
  expect(readFileSync(join(repoRoot, "docs/operators.md"), "utf8")).toBe(operatorsMarkdown(defs));
});

test("the option reference reads types, defaults, bounds and descriptions from a schema", async () => {
  const nms = (await loadRegistry()).get("nms")!;
  const iou = optionDocs(nms).find((r) => r.name === "iou")!;
  expect(iou).toMatchObject({ type: "number", required: false, default: 0.45 });
  expect(iou.constraints).toEqual(["min value >=0", "max value <=1"]);
  const jsonl = (await loadRegistry()).get("sink-jsonl")!;
  expect(optionDocs(jsonl).find((r) => r.name === "path")).toMatchObject({ type: "string", required: true });
  // ingest takes url (one camera) or streams (several): neither alone is required.
  const ingest = (await loadRegistry()).get("ingest")!;
  expect(optionDocs(ingest).find((r) => r.name === "url")).toMatchObject({ type: "string", required: false });
});
