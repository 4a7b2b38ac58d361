import { describe, expect, test } from "bun:test";
import {
  decodeInferRequest,
  decodeInferResponse,
  encodeInferRequest,
  encodeInferResponse,
  HEADER_LENGTH,
  KServeProtocolError,
  parseModelMetadata,
  type Encoded,
} from "../runtime/inference/kserve.ts";

const bytesOf = async (e: Encoded) => new Uint8Array(await e.body.arrayBuffer());
const headerLength = (e: Encoded) => e.headers[HEADER_LENGTH.toLowerCase()] ?? null;
const enc = new TextEncoder();

const errorOf = (f: () => unknown): Error => {
  try {
    f();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected an error");
};

describe("KServe v2 codec", () => {
  const data = new Float32Array([0.1, -2.5, 3.75, 1e-3, 65000, 0]);

  test("binary request: JSON header of the announced length, then the raw tensor", async () => {
    const e = encodeInferRequest([{ name: "images", datatype: "FP32", shape: [1, 2, 3], data }], ["output0"], true, "req-7");
    expect(e.headers["content-type"]).toBe("application/octet-stream");
    const body = await bytesOf(e);
    const n = Number(headerLength(e));
    expect(JSON.parse(new TextDecoder().decode(body.subarray(0, n)))).toEqual({
      id: "req-7",
      inputs: [{ name: "images", shape: [1, 2, 3], datatype: "FP32", parameters: { binary_data_size: 24 } }],
      outputs: [{ name: "output0", parameters: { binary_data: true } }],
    });
    expect(body.byteLength).toBe(n + 24);
    const req = decodeInferRequest(body, headerLength(e));
    expect(req.inputs[0].data).toEqual(data);
    expect(req.binaryOutput("output0")).toBe(true);
  });

  test("JSON request with nested data and binary_data_output for every output", () => {
    const body = enc.encode(
      JSON.stringify({ parameters: { binary_data_output: true }, inputs: [{ name: "x", shape: [2, 2], datatype: "FP32", data: [[1, 2], [3, 4]] }] }),
    );
    const req = decodeInferRequest(body, null);
    expect([...req.inputs[0].data]).toEqual([1, 2, 3, 4]);
    expect(req.binaryOutput("anything")).toBe(true);
  });

  test("responses round-trip in JSON and binary; float32 values survive JSON exactly", async () => {
    for (const binary of [false, true]) {
      const e = encodeInferResponse("m", "1", "id-1", [{ name: "y", datatype: "FP32", shape: [2, 3], data }], () => binary);
      const [y] = decodeInferResponse(await bytesOf(e), headerLength(e));
      expect([y.name, y.datatype, y.shape]).toEqual(["y", "FP32", [2, 3]]);
      expect(y.data).toEqual(data);
    }
  });

  test("FP16 on the wire: 2 bytes per value, converted to and from float32", async () => {
    const e = encodeInferRequest([{ name: "images", datatype: "FP16", shape: [6], data }], ["out"], true);
    const body = await bytesOf(e);
    expect(body.byteLength - Number(headerLength(e))).toBe(12);
    const back = decodeInferRequest(body, headerLength(e)).inputs[0].data;
    expect([...back]).toEqual([...Float16Array.from(data)]);
    // Half precision: 3 significant digits, and 65000 rounds to a representable 64992.
    expect(back[0]).toBeCloseTo(0.1, 3);
    expect(back[4]).toBe(64992);
  });

  test("an unaligned binary part (odd header length) still decodes", async () => {
    for (const id of ["a", "ab", "abc", "abcd"]) {
      const e = encodeInferResponse("m", "1", id, [{ name: "y", datatype: "FP32", shape: [6], data }], () => true);
      expect(decodeInferResponse(await bytesOf(e), headerLength(e))[0].data).toEqual(data);
    }
  });

  test("protocol violations are KServeProtocolErrors that name the problem", async () => {
    const e = encodeInferRequest([{ name: "images", datatype: "FP32", shape: [1, 2, 3], data }], ["o"], true);
    const body = await bytesOf(e);
    const n = headerLength(e);
    const cases: [() => unknown, string][] = [
      [() => decodeInferRequest(body.subarray(0, body.byteLength - 4), n), "tensor images: binary data ends after 20 of 24 bytes"],
      [() => decodeInferRequest(new Uint8Array([...body, 0, 0]), n), "2 bytes of binary data belong to no tensor"],
      [() => decodeInferRequest(body, "99999"), `${HEADER_LENGTH}: "99999" is not a length within the ${body.byteLength}-byte body`],
      [() => decodeInferRequest(body, null), "the JSON header is not valid JSON"],
      [() => decodeInferRequest(enc.encode('{"inputs":[{"name":"x","shape":[3],"datatype":"INT64","data":[1,2,3]}]}'), null), "tensor x: datatype INT64 is not supported (FP32 or FP16)"],
      [() => decodeInferRequest(enc.encode('{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}'), null), "tensor x: 2 values in data, shape [3] needs 3"],
      [() => decodeInferRequest(enc.encode('{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["1"]}]}'), null), "tensor x: data[0] is string, expected a number"],
      [() => decodeInferRequest(enc.encode('{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}'), null), "tensor x has neither data nor binary_data_size"],
      [() => decodeInferRequest(enc.encode('{"inputs":[]}'), null), "inference request: inputs: a request needs at least one input"],
    ];
    for (const [f, message] of cases) {
      const err = errorOf(f);
      expect(err).toBeInstanceOf(KServeProtocolError);
      expect(err.message).toStartWith(message);
    }
  });

  test("model metadata: Triton's extra keys are ignored, missing ones are named", () => {
    const triton = { name: "yolo", versions: ["1"], platform: "tensorrt_plan", inputs: [{ name: "images", datatype: "FP16", shape: [-1, 3, 640, 640] }], outputs: [], extra: 1 };
    expect(parseModelMetadata(triton)).toEqual({ name: "yolo", versions: ["1"], platform: "tensorrt_plan", inputs: triton.inputs, outputs: [] });
    expect(errorOf(() => parseModelMetadata({ name: "yolo", inputs: [] })).message).toStartWith("model metadata: outputs:");
  });
});
