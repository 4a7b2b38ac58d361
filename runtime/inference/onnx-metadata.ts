/**
 * Reads `metadata_props` from an ONNX file (onnxruntime-node does not expose
 * them). Walks the ModelProto's top-level protobuf fields, skipping the graph.
 */
export function readOnnxMetadata(bytes: Uint8Array): Record<string, string> {
  const out: Record<string, string> = {};
  const dec = new TextDecoder();
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let mul = 1;
    for (;;) {
      if (pos >= bytes.length) throw new Error("truncated ONNX file");
      const b = bytes[pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
  };
  const fields = (end: number, visit: (field: number, start: number, len: number) => void) => {
    while (pos < end) {
      const tag = varint();
      const field = Math.floor(tag / 8);
      const wire = tag & 7;
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const len = varint();
        const start = pos;
        pos += len;
        visit(field, start, len);
      } else throw new Error(`not an ONNX model (protobuf wire type ${wire})`);
    }
  };
  const METADATA_PROPS = 14;
  fields(bytes.length, (field, start, len) => {
    if (field !== METADATA_PROPS) return;
    const after = pos;
    pos = start;
    let key = "";
    let value = "";
    fields(start + len, (f, s, l) => {
      if (f === 1) key = dec.decode(bytes.subarray(s, s + l));
      if (f === 2) value = dec.decode(bytes.subarray(s, s + l));
    });
    out[key] = value;
    pos = after;
  });
  return out;
}

/**
 * Class names from a YOLO export's `names` property: a Python dict repr
 * (`{0: 'person', ...}`) or a JSON list/object.
 */
export function parseClassNames(text: string | undefined): string[] | undefined {
  if (!text) return undefined;
  try {
    const j = JSON.parse(text);
    if (Array.isArray(j)) return j.map(String);
    if (j && typeof j === "object") return Object.entries(j).sort((a, b) => Number(a[0]) - Number(b[0])).map(([, n]) => String(n));
  } catch {
    // Not JSON: fall through to the Python dict form.
  }
  const names: string[] = [];
  for (const m of text.matchAll(/(\d+)\s*:\s*(['"])(.*?)\2/g)) names[Number(m[1])] = m[3];
  return names.length ? Array.from(names, (n, i) => n ?? String(i)) : undefined;
}
