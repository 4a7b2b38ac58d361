/** A markdown table from a header and rows. */
export function markdownTable(head: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const widths = head.map((h, i) => Math.max(h.length, 3, ...cells.map((r) => r[i]?.length ?? 0)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...cells.map(line)].join("\n");
}

export const fmt = (x: number, digits = 1) => x.toFixed(digits);
