// Splits the live feed (/api/live) into records: u32 header length, JSON
// header, u32 JPEG length, JPEG (see runtime/observe/http/live.ts). Shared by the live
// page and the tests, so both read the feed the same way.

const decoder = new TextDecoder();

/**
 * Appends `chunk` to `pending` and takes every complete record.
 * @param {Uint8Array} pending bytes left over from the last call
 * @param {Uint8Array} chunk newly received bytes
 * @returns {{ records: { header: any, jpeg: Uint8Array }[], rest: Uint8Array }}
 */
export function takeRecords(pending, chunk) {
  let buf = new Uint8Array(pending.length + chunk.length);
  buf.set(pending);
  buf.set(chunk, pending.length);
  const records = [];
  for (;;) {
    if (buf.length < 4) break;
    const view = new DataView(buf.buffer, buf.byteOffset);
    const hl = view.getUint32(0);
    if (buf.length < 8 + hl) break;
    const jl = view.getUint32(4 + hl);
    if (buf.length < 8 + hl + jl) break;
    records.push({ header: JSON.parse(decoder.decode(buf.subarray(4, 4 + hl))), jpeg: buf.slice(8 + hl, 8 + hl + jl) });
    buf = buf.slice(8 + hl + jl);
  }
  return { records, rest: buf };
}
