/** Errors a user can fix by editing a pipeline file or its command line. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** One problem in a pipeline file, located by line and field path. */
export interface FileIssue {
  line: number;
  column: number;
  path: string;
  message: string;
}

/** A pipeline file failed to parse or validate; lists every problem found. */
export class PipelineFileError extends ConfigError {
  override name = "PipelineFileError";
  constructor(
    readonly file: string,
    readonly issues: FileIssue[],
  ) {
    super(issues.map((i) => `${file}:${i.line}:${i.column}: ${i.path ? `${i.path}: ` : ""}${i.message}`).join("\n"));
  }
}

/** An operator failed while running; carries the stage id. */
export class StageError extends Error {
  override name = "StageError";
  constructor(
    readonly stage: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`[${stage}] ${message}`, options);
  }
}
