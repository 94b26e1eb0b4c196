/**
 * SMB names are UTF-16LE; snapshot trees keep names as bytes, UTF-8 where
 * valid. A Windows name may hold an unpaired surrogate, which UTF-8 cannot
 * express; such names are kept as WTF-8 (surrogates encoded like any other
 * code point), which is not valid UTF-8 and so is stored verbatim (nameB64)
 * and converts back to the exact UTF-16 the server sent.
 */

/** UTF-16LE bytes → UTF-8 (WTF-8 for unpaired surrogates). */
export function utf16ToBytes(name16: Buffer): Buffer {
  const s = name16.toString('utf16le');
  if (s.isWellFormed()) return Buffer.from(s, 'utf8');
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const cp = s.codePointAt(i)!;
    if (cp > 0xffff) i++;
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return Buffer.from(out);
}

/** UTF-8 or WTF-8 bytes → UTF-16LE, the inverse of utf16ToBytes. Invalid sequences become U+FFFD. */
export function bytesToUtf16(b: Buffer): Buffer {
  const units: number[] = [];
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    let cp = 0xfffd;
    let n = 1;
    if (c < 0x80) cp = c;
    else if (c >= 0xc2 && c < 0xe0 && cont(b, i, 1)) { cp = ((c & 0x1f) << 6) | (b[i + 1]! & 0x3f); n = 2; }
    else if (c >= 0xe0 && c < 0xf0 && cont(b, i, 2)) {
      cp = ((c & 0x0f) << 12) | ((b[i + 1]! & 0x3f) << 6) | (b[i + 2]! & 0x3f);
      n = 3;
      if (cp < 0x800) { cp = 0xfffd; n = 1; }
    } else if (c >= 0xf0 && c < 0xf5 && cont(b, i, 3)) {
      cp = ((c & 0x07) << 18) | ((b[i + 1]! & 0x3f) << 12) | ((b[i + 2]! & 0x3f) << 6) | (b[i + 3]! & 0x3f);
      n = 4;
      if (cp < 0x10000 || cp > 0x10ffff) { cp = 0xfffd; n = 1; }
    }
    i += n;
    if (cp > 0xffff) units.push(0xd800 + ((cp - 0x10000) >> 10), 0xdc00 + ((cp - 0x10000) & 0x3ff));
    else units.push(cp);
  }
  const out = Buffer.allocUnsafe(units.length * 2);
  units.forEach((u, i) => out.writeUInt16LE(u, i * 2));
  return out;
}

function cont(b: Buffer, i: number, n: number): boolean {
  if (i + n >= b.length) return false;
  for (let k = 1; k <= n; k++) if (((b[i + k] ?? 0) & 0xc0) !== 0x80) return false;
  return true;
}
