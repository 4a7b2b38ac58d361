const PLACEHOLDER = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Expands `${VAR}` and `${VAR:-default}` (default used when VAR is unset or
 * empty, as in POSIX shells). `$${` escapes a literal `${`.
 * @example
 * interpolate("${CAMERA_URL:-rtsp://cam/1}", (k) => undefined); // "rtsp://cam/1"
 */
export function interpolate(text: string, env: (k: string) => string | undefined): string | { error: string } {
  let missing: string | undefined;
  const out = text.replace(/(\$?)\$\{([^}]*)\}/g, (whole, escape: string, inner: string) => {
    if (escape) return whole.slice(1);
    PLACEHOLDER.lastIndex = 0;
    const m = PLACEHOLDER.exec(`\${${inner}}`);
    if (!m || m[0].length !== inner.length + 3) {
      missing ??= `malformed placeholder "${whole}" (use \${VAR} or \${VAR:-default})`;
      return whole;
    }
    const value = env(m[1]);
    if (value !== undefined && value !== "") return value;
    if (m[2] !== undefined) return m[2];
    missing ??= `environment variable ${m[1]} is not set (give a default with \${${m[1]}:-value})`;
    return whole;
  });
  return missing ? { error: missing } : out;
}
