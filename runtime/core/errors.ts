/**
 * Typed errors. Every error framewire throws on purpose is a FramewireError
 * with a stable `code` (match on it, not on the message) and, where it wraps
 * another failure, a `cause`.
 */

/** The base of framewire's errors: a stable machine-readable `code`. */
export class FramewireError extends Error {
  override name = "FramewireError";
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A FramewireError subclass whose instances all carry one code. */
export type CodedErrorClass = new (message: string, options?: { cause?: unknown }) => FramewireError;

/**
 * Makes an error class with a fixed name and code (instanceof works).
 * @example
 * export const WireFormatError = codedError("WireFormatError", "E_WIRE_FORMAT");
 * export type WireFormatError = InstanceType<typeof WireFormatError>;
 * throw new WireFormatError("frame has no image blob"); // err.code === "E_WIRE_FORMAT"
 */
export function codedError(name: string, code: string): CodedErrorClass {
  const C = class extends FramewireError {
    constructor(message: string, options?: { cause?: unknown }) {
      super(code, message, options);
      this.name = name;
    }
  };
  Object.defineProperty(C, "name", { value: name });
  return C;
}

/** Errors a user can fix by editing a pipeline file or its command line. */
export class ConfigError extends FramewireError {
  override name = "ConfigError";
  constructor(message: string, options?: { cause?: unknown }, code = "E_CONFIG") {
    super(code, message, options);
  }
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
    super(issues.map((i) => `${file}:${i.line}:${i.column}: ${i.path ? `${i.path}: ` : ""}${i.message}`).join("\n"), undefined, "E_PIPELINE_FILE");
  }
}

/** An operator failed while running; carries the stage id. */
export class StageError extends FramewireError {
  override name = "StageError";
  constructor(
    readonly stage: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super("E_STAGE", `[${stage}] ${message}`, options);
  }
}
