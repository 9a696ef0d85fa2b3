/**
 * Hugging Face tokenizers' ByteLevel decoder for one token (docs/engram-tokens.md#decoding-one-token):
 * each char of the token string stands for one byte through GPT-2's bytes_to_unicode table; the bytes
 * are UTF-8-decoded with U+FFFD for invalid sequences. A token with a char outside the table (an added
 * token such as "<｜begin▁of▁sentence｜>") decodes to its own UTF-8 bytes, that is, to itself.
 */

/** char code → byte, for the 256 chars of GPT-2's bytes_to_unicode table (all below U+0144). */
const CHAR_TO_BYTE: Int16Array = (() => {
  const table = new Int16Array(0x144).fill(-1);
  let next = 0x100;
  for (let b = 0; b < 256; b++) {
    // Printable Latin-1 bytes stand for themselves ('!'..'~', '¡'..'¬', '®'..'ÿ'); the other 68 bytes
    // (controls, space, U+00AD) get the chars from U+0100 up, in byte order.
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[printable ? b : next++] = b;
  }
  return table;
})();

/** Replaces invalid UTF-8 with U+FFFD, as Rust's String::from_utf8_lossy; keeps a leading BOM (U+FEFF). */
const utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

/** The text HF's ByteLevel decoder gives for the single token string `token`. */
export function decodeByteLevel(token: string): string {
  const bytes = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const code = token.charCodeAt(i);
    const byte = code < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[code]! : -1;
    if (byte < 0) return token;
    bytes[i] = byte;
  }
  return utf8.decode(bytes);
}
