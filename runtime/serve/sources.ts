/**
 * Where `framewire serve` finds its models: a Triton model repository
 * (`<dir>/<name>/config.pbtxt`, `<dir>/<name>/<version>/model.onnx`, label
 * and warm-up files beside them), or one model file (`--model FILE`, the
 * one-model shorthand). A source is read again on every load, so a changed
 * config.pbtxt or a new version directory takes effect on the next load.
 */
import { readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { ConfigError } from "../core/errors.ts";
import { exists, readText } from "../platform/index.ts";
import { configFromJson, emptyDraft, issueAt, ModelConfigError, modelFileProblem, readModelConfig, type ConfigDraft } from "./config.ts";
import type { AutoDefaults } from "./config-complete.ts";

/** The repository or model file cannot be read as one (missing directory, no versions, no model file). */
export class ModelRepositoryError extends ConfigError {
  override name = "ModelRepositoryError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options, "E_MODEL_REPOSITORY");
  }
}

/** What loading a model means right now: its config and the version files its version policy picks. */
export interface ModelPlan {
  name: string;
  draft: ConfigDraft;
  /** The model's directory; undefined for a lone file. */
  dir?: string;
  versions: { version: string; file: string }[];
  defaults: AutoDefaults;
  threads: number;
}

export interface ModelSource {
  /** The source as messages name it. */
  readonly describe: string;
  /** The models it holds now. */
  names(): Promise<string[]>;
  /**
   * The plan for loading `name`; `config` (a load request's JSON config) replaces config.pbtxt.
   * @throws ModelConfigError / ModelRepositoryError naming what is wrong.
   */
  plan(name: string, config?: unknown): Promise<ModelPlan>;
}

const isDir = async (path: string) => (await stat(path).catch(() => undefined))?.isDirectory() ?? false;

/**
 * A Triton model repository directory.
 * @example
 * const source = new RepositorySource("examples/model_repository", defaults, 0);
 * await source.names(); // ["yolov5", "yolov5n"]
 * (await source.plan("yolov5")).versions; // [{ version: "1", file: "examples/model_repository/yolov5/1/model.onnx" }]
 */
export class RepositorySource implements ModelSource {
  readonly describe: string;
  constructor(
    private root: string,
    private defaults: AutoDefaults,
    private threads: number,
  ) {
    this.describe = `model repository ${root}`;
  }

  /** Checks that the directory exists. */
  async open(): Promise<void> {
    if (!(await isDir(this.root))) throw new ModelRepositoryError(`--model-repository ${this.root}: no such directory`);
  }

  async names(): Promise<string[]> {
    const entries = await readdir(this.root, { withFileTypes: true });
    const out: string[] = [];
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      if (e.isDirectory() || (e.isSymbolicLink() && (await isDir(join(this.root, e.name))))) out.push(e.name);
    }
    return out.sort();
  }

  async plan(name: string, config?: unknown): Promise<ModelPlan> {
    const dir = join(this.root, name);
    if (!/^[\w.-]+$/.test(name) || name.startsWith(".") || !(await isDir(dir))) {
      throw new ModelRepositoryError(`no model "${name}" in ${this.describe} (it has ${(await this.names()).join(", ") || "none"})`);
    }
    const configFile = join(dir, "config.pbtxt");
    let draft: ConfigDraft;
    if (config !== undefined) draft = configFromJson(`the load request's config for ${name}`, config, name);
    else if (await exists(configFile)) draft = readModelConfig(configFile, await readText(configFile), name);
    else draft = emptyDraft(`${dir} (no config.pbtxt)`);

    const numeric = (await readdir(dir, { withFileTypes: true }))
      .filter((e) => /^\d+$/.test(e.name))
      .map((e) => e.name)
      .sort((a, b) => Number(a) - Number(b));
    const versionDirs: string[] = [];
    for (const n of numeric) if (await isDir(join(dir, n))) versionDirs.push(n);
    if (!versionDirs.length) throw new ModelRepositoryError(`${dir}: no version directories (a model is ${name}/1/model.onnx, with its config at ${name}/config.pbtxt)`);

    const policy = draft.config.version_policy;
    let chosen: string[];
    if (policy?.all) chosen = versionDirs;
    else if (policy?.specific) {
      const missing = policy.specific.versions.map((x, i) => [String(x), i] as const).filter(([x]) => !versionDirs.includes(x));
      if (missing.length) {
        throw new ModelConfigError(
          draft.file,
          missing.map(([x, i]) => issueAt(draft, ["version_policy", "specific", "versions", i], `version ${x} has no directory ${join(dir, x)} (versions here: ${versionDirs.join(", ")})`)),
        );
      }
      chosen = policy.specific.versions.map(String);
    } else chosen = versionDirs.slice(-(policy?.latest?.num_versions ?? 1));

    const filename = draft.config.default_model_filename ?? "model.onnx";
    const versions: ModelPlan["versions"] = [];
    for (const version of chosen) {
      const file = join(dir, version, filename);
      if (!(await exists(file))) {
        const present = (await readdir(join(dir, version))).filter((f) => !f.startsWith("."));
        const wrongKind = present.map((f) => modelFileProblem(join(dir, version, f))).find(Boolean);
        if (wrongKind) throw new ModelRepositoryError(wrongKind);
        throw new ModelRepositoryError(`${join(dir, version)}: no ${filename}${present.length ? ` (it has ${present.join(", ")})` : ""}${draft.config.default_model_filename ? "" : "; set default_model_filename in config.pbtxt for another name"}`);
      }
      versions.push({ version, file });
    }
    return { name, draft, dir, versions, defaults: this.defaults, threads: this.threads };
  }
}

/**
 * One model file served as version 1 (`--model FILE`); its config comes
 * from the flags and the model (auto-complete).
 * @example
 * const source = new FileSource("yolov5n.onnx", undefined, defaults, 0);
 * await source.names(); // ["yolov5n"]
 */
export class FileSource implements ModelSource {
  readonly describe: string;
  readonly name: string;
  constructor(
    private file: string,
    name: string | undefined,
    private defaults: AutoDefaults,
    private threads: number,
  ) {
    this.name = name ?? basename(file).replace(/\.onnx$/i, "");
    this.describe = `--model ${file}`;
  }

  async names(): Promise<string[]> {
    return [this.name];
  }

  async plan(name: string, config?: unknown): Promise<ModelPlan> {
    if (name !== this.name) throw new ModelRepositoryError(`no model "${name}" here: this server serves ${this.describe} as ${this.name}`);
    const problem = modelFileProblem(this.file);
    if (problem) throw new ModelRepositoryError(problem);
    const draft = config !== undefined ? configFromJson(`the load request's config for ${name}`, config, name) : emptyDraft(this.describe);
    return { name, draft, versions: [{ version: "1", file: this.file }], defaults: this.defaults, threads: this.threads };
  }
}
