/**
 * The KServe v2 inference protocol over HTTP (what NVIDIA Triton and
 * `framewire serve` speak), shared by the infer-triton client and the server:
 * JSON bodies, and the binary tensor data extension, where the body is a JSON
 * header of `Inference-Header-Content-Length` bytes followed by the raw
 * tensors (row-major, little-endian) of every tensor whose parameters carry
 * `binary_data_size`, in the order they are listed.
 *
 * Tensors are float32 in memory; FP16 on the wire is converted at this edge.
 * Every JSON document from the other side is validated with valibot.
 */
import { codedError } from "../core/errors.ts";
import * as v from "valibot";

export const HEADER_LENGTH = "Inference-Header-Content-Length";

/** A request or response that breaks the protocol (the other side's fault: HTTP 400 on a server). */
export const KServeProtocolError = codedError("KServeProtocolError", "E_KSERVE_PROTOCOL");
export type KServeProtocolError = InstanceType<typeof KServeProtocolError>;

const Parameter = v.union([v.string(), v.number(), v.boolean()]);
const Parameters = v.record(v.string(), Parameter);
const Shape = v.array(v.pipe(v.number(), v.integer(), v.minValue(-1)));

export const TensorMetadata = v.object({ name: v.string(), datatype: v.string(), shape: Shape });
export type TensorMetadata = v.InferOutput<typeof TensorMetadata>;

/** GET /v2/models/{name}[/versions/{v}]; unknown keys are ignored (Triton adds some). */
export const ModelMetadata = v.object({
  name: v.string(),
  versions: v.optional(v.array(v.string())),
  platform: v.optional(v.string()),
  inputs: v.array(TensorMetadata),
  outputs: v.array(TensorMetadata),
  parameters: v.optional(Parameters),
});
export type ModelMetadata = v.InferOutput<typeof ModelMetadata>;

const RequestInput = v.object({
  name: v.pipe(v.string(), v.minLength(1)),
  shape: v.array(v.pipe(v.number(), v.integer(), v.minValue(0))),
  datatype: v.string(),
  parameters: v.optional(Parameters),
  data: v.optional(v.array(v.unknown())),
});

export const InferRequestHeader = v.object({
  id: v.optional(v.string()),
  parameters: v.optional(Parameters),
  inputs: v.pipe(v.array(RequestInput), v.minLength(1, "a request needs at least one input")),
  outputs: v.optional(v.array(v.object({ name: v.string(), parameters: v.optional(Parameters) }))),
});
export type InferRequestHeader = v.InferOutput<typeof InferRequestHeader>;

export const InferResponseHeader = v.object({
  model_name: v.string(),
  model_version: v.optional(v.string()),
  id: v.optional(v.string()),
  parameters: v.optional(Parameters),
  outputs: v.array(
    v.object({
      name: v.string(),
      shape: v.array(v.pipe(v.number(), v.integer(), v.minValue(0))),
      datatype: v.string(),
      parameters: v.optional(Parameters),
      data: v.optional(v.array(v.unknown())),
    }),
  ),
});

/** An int64 in Triton's JSON: a number, or a decimal string (protobuf's JSON mapping). */
const Int64 = v.union([v.pipe(v.number(), v.integer()), v.pipe(v.string(), v.regex(/^-?\d+$/), v.transform(Number))]);

/**
 * What a client reads from `GET /v2/models/{name}/config` (Triton's model
 * configuration extension): batching settings; other keys are ignored.
 */
export const ModelConfigSummary = v.object({
  name: v.optional(v.string()),
  platform: v.optional(v.string()),
  max_batch_size: v.optional(Int64, 0),
  dynamic_batching: v.optional(
    v.object({
      preferred_batch_size: v.optional(v.array(Int64), []),
      max_queue_delay_microseconds: v.optional(Int64, 0),
    }),
  ),
});
export type ModelConfigSummary = v.InferOutput<typeof ModelConfigSummary>;

/** `{"error": "..."}`, the protocol's error body. */
export const ErrorBody = v.object({ error: v.string() });

export type WireDatatype = "FP32" | "FP16";

/** A tensor in memory (always float32) with the datatype it has on the wire. */
export interface WireTensor {
  name: string;
  datatype: WireDatatype;
  shape: number[];
  data: Float32Array;
}

/** An encoded body with the headers that must go with it. */
export interface Encoded {
  body: Blob;
  headers: Record<string, string>;
}

const BYTES = { FP32: 4, FP16: 2 } as const;

/** Element count of a shape. */
export function elements(shape: readonly number[]): number {
  return shape.reduce((a, d) => a * d, 1);
}

function datatypeOf(name: string, datatype: string): WireDatatype {
  if (datatype === "FP32" || datatype === "FP16") return datatype;
  throw new KServeProtocolError(`tensor ${name}: datatype ${datatype} is not supported (FP32 or FP16)`);
}

/** Raw little-endian bytes of a tensor (typed arrays are host order; every supported host is little-endian). */
function toBytes(t: WireTensor): Uint8Array {
  const typed = t.datatype === "FP16" ? Float16Array.from(t.data) : t.data;
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
}

function fromBytes(name: string, datatype: WireDatatype, shape: number[], bytes: Uint8Array): Float32Array {
  const want = elements(shape) * BYTES[datatype];
  if (bytes.byteLength !== want) throw new KServeProtocolError(`tensor ${name}: ${bytes.byteLength} bytes of binary data, shape [${shape}] ${datatype} needs ${want}`);
  // A typed view needs an aligned offset; the JSON header's length rarely leaves one.
  const aligned = bytes.byteOffset % BYTES[datatype] === 0 ? bytes : bytes.slice();
  if (datatype === "FP16") return Float32Array.from(new Float16Array(aligned.buffer, aligned.byteOffset, elements(shape)));
  return new Float32Array(aligned.buffer, aligned.byteOffset, elements(shape));
}

/** JSON `data`: flat or nested numbers, row-major. */
function fromJson(name: string, shape: number[], data: unknown[]): Float32Array {
  const flat = data.flat(Infinity);
  if (flat.length !== elements(shape)) throw new KServeProtocolError(`tensor ${name}: ${flat.length} values in data, shape [${shape}] needs ${elements(shape)}`);
  const out = new Float32Array(flat.length);
  for (let i = 0; i < flat.length; i++) {
    const x = flat[i];
    if (typeof x !== "number") throw new KServeProtocolError(`tensor ${name}: data[${i}] is ${typeof x}, expected a number`);
    out[i] = x;
  }
  return out;
}

/** Splits a body into its JSON header and the binary part that follows. */
function split(body: Uint8Array, headerLength: string | null): { json: unknown; binary: Uint8Array } {
  let n = body.byteLength;
  if (headerLength !== null) {
    n = Number(headerLength);
    if (!/^\d+$/.test(headerLength) || n > body.byteLength) {
      throw new KServeProtocolError(`${HEADER_LENGTH}: "${headerLength}" is not a length within the ${body.byteLength}-byte body`);
    }
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(body.subarray(0, n)));
  } catch (err) {
    throw new KServeProtocolError(`the JSON header is not valid JSON: ${(err as Error).message}`);
  }
  return { json, binary: body.subarray(n) };
}

function parse<S extends v.GenericSchema>(schema: S, json: unknown, what: string): v.InferOutput<S> {
  const r = v.safeParse(schema, json);
  if (r.success) return r.output;
  const i = r.issues[0];
  const path = i.path?.map((p) => p.key).join(".") ?? "";
  throw new KServeProtocolError(`${what}: ${path ? `${path}: ` : ""}${i.message}`);
}

/** Reads tensors listed in a header, taking binary data in list order. */
function readTensors(list: { name: string; shape: number[]; datatype: string; parameters?: Record<string, unknown>; data?: unknown[] }[], binary: Uint8Array): WireTensor[] {
  let offset = 0;
  const out = list.map((t) => {
    const datatype = datatypeOf(t.name, t.datatype);
    const size = t.parameters?.binary_data_size;
    if (size !== undefined) {
      if (typeof size !== "number" || !Number.isInteger(size) || size < 0) throw new KServeProtocolError(`tensor ${t.name}: binary_data_size must be a byte count`);
      if (offset + size > binary.byteLength) throw new KServeProtocolError(`tensor ${t.name}: binary data ends after ${binary.byteLength - offset} of ${size} bytes`);
      const data = fromBytes(t.name, datatype, t.shape, binary.subarray(offset, offset + size));
      offset += size;
      return { name: t.name, datatype, shape: t.shape, data };
    }
    if (!t.data) throw new KServeProtocolError(`tensor ${t.name} has neither data nor binary_data_size`);
    return { name: t.name, datatype, shape: t.shape, data: fromJson(t.name, t.shape, t.data) };
  });
  if (offset !== binary.byteLength) throw new KServeProtocolError(`${binary.byteLength - offset} bytes of binary data belong to no tensor`);
  return out;
}

/** JSON header plus binary parts as one body, with the header length when there is binary data. */
function assemble(header: unknown, parts: Uint8Array[]): Encoded {
  const json = new TextEncoder().encode(JSON.stringify(header));
  if (!parts.length) return { body: new Blob([json]), headers: { "content-type": "application/json" } };
  return {
    body: new Blob([json, ...parts]),
    headers: { "content-type": "application/octet-stream", [HEADER_LENGTH.toLowerCase()]: String(json.byteLength) },
  };
}

function tensorEntry(t: WireTensor, binary: boolean, parts: Uint8Array[]): Record<string, unknown> {
  const entry: Record<string, unknown> = { name: t.name, shape: t.shape, datatype: t.datatype };
  if (binary) {
    const bytes = toBytes(t);
    parts.push(bytes);
    entry.parameters = { binary_data_size: bytes.byteLength };
  } else {
    // FP16 in JSON is still written as numbers; round them as the wire type would.
    entry.data = Array.from(t.datatype === "FP16" ? Float16Array.from(t.data) : t.data);
  }
  return entry;
}

/**
 * Encodes an inference request (client side).
 * @example
 * const { body, headers } = encodeInferRequest([{ name: "images", datatype: "FP32", shape: [1, 3, 640, 640], data }], ["output0"], true);
 * await fetch(`${url}/v2/models/yolov5n/infer`, { method: "POST", body, headers });
 */
export function encodeInferRequest(inputs: WireTensor[], outputs: string[], binary: boolean, id?: string): Encoded {
  const parts: Uint8Array[] = [];
  const header = {
    ...(id ? { id } : {}),
    inputs: inputs.map((t) => tensorEntry(t, binary, parts)),
    outputs: outputs.map((name) => ({ name, parameters: { binary_data: binary } })),
  };
  return assemble(header, parts);
}

/** A decoded request: the validated header, its input tensors, and which outputs to send back as binary. */
export interface DecodedRequest {
  header: InferRequestHeader;
  inputs: WireTensor[];
  /** True when output `name` was asked for in binary (per output, or `binary_data_output` for all). */
  binaryOutput(name: string): boolean;
}

/**
 * Decodes an inference request (server side).
 * @throws KServeProtocolError naming what is wrong.
 * @example
 * const req = decodeInferRequest(new Uint8Array(await request.arrayBuffer()), request.headers.get("inference-header-content-length"));
 */
export function decodeInferRequest(body: Uint8Array, headerLength: string | null): DecodedRequest {
  const { json, binary } = split(body, headerLength);
  const header = parse(InferRequestHeader, json, "inference request");
  const inputs = readTensors(header.inputs, binary);
  const all = header.parameters?.binary_data_output === true;
  const perOutput = new Map(header.outputs?.map((o) => [o.name, o.parameters?.binary_data]));
  return { header, inputs, binaryOutput: (name) => (perOutput.get(name) ?? all) === true };
}

/**
 * Encodes an inference response (server side).
 * @example
 * const { body, headers } = encodeInferResponse("yolov5n", "1", undefined, [output], () => true);
 */
export function encodeInferResponse(model: string, version: string, id: string | undefined, outputs: WireTensor[], binary: (name: string) => boolean): Encoded {
  const parts: Uint8Array[] = [];
  const header = {
    model_name: model,
    model_version: version,
    ...(id ? { id } : {}),
    outputs: outputs.map((t) => tensorEntry(t, binary(t.name), parts)),
  };
  return assemble(header, parts);
}

/**
 * Decodes an inference response (client side).
 * @throws KServeProtocolError naming what is wrong.
 * @example
 * const outputs = decodeInferResponse(new Uint8Array(await res.arrayBuffer()), res.headers.get("inference-header-content-length"));
 */
export function decodeInferResponse(body: Uint8Array, headerLength: string | null): WireTensor[] {
  const { json, binary } = split(body, headerLength);
  return readTensors(parse(InferResponseHeader, json, "inference response").outputs, binary);
}

/**
 * Validates a model configuration document (the batching part of it).
 * @throws KServeProtocolError naming the bad field.
 * @example
 * const { max_batch_size, dynamic_batching } = parseModelConfig(await (await fetch(`${url}/v2/models/yolov5/config`)).json());
 */
export function parseModelConfig(json: unknown): ModelConfigSummary {
  return parse(ModelConfigSummary, json, "model configuration");
}

/**
 * Validates a model metadata document.
 * @throws KServeProtocolError naming the bad field.
 */
export function parseModelMetadata(json: unknown): ModelMetadata {
  return parse(ModelMetadata, json, "model metadata");
}
