/**
 * NATS subject semantics for the in-memory bus: tokens separated by `.`,
 * `*` matches one token, `>` (last) matches one or more.
 */

/**
 * @example
 * subjectMatches("fw.demo.*", "fw.demo.cam"); // true
 * subjectMatches("fw.>", "fw.demo.cam"); // true
 */
export function subjectMatches(pattern: string, subject: string): boolean {
  if (pattern === subject) return true;
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    const tok = p[i];
    if (tok === ">") return i === p.length - 1 && s.length > i;
    if (i >= s.length) return false;
    if (tok !== "*" && tok !== s[i]) return false;
  }
  return p.length === s.length;
}

const TOKEN = /^[^\s.*>]+$/;

/** Returns an error message when `subject` is not a valid subject (or pattern if `wildcards`). */
export function checkSubject(subject: string, wildcards: boolean): string | undefined {
  const toks = subject.split(".");
  for (let i = 0; i < toks.length; i++) {
    const t = toks[i];
    if (wildcards && (t === "*" || (t === ">" && i === toks.length - 1))) continue;
    if (!TOKEN.test(t)) return `invalid subject "${subject}" (token ${i + 1} "${t}")`;
  }
  return undefined;
}
