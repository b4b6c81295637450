import type { WorldTokenizer } from './world.js';

/**
 * Turns ids into text one at a time for streaming output. A token may end in the middle of a UTF-8
 * character (emoji and CJK are often split into byte tokens), so the incomplete tail is held back
 * until the bytes that complete it arrive; the concatenated output always equals decode(all ids).
 */
export class StreamDecoder {
  // TextDecoder's streaming mode does exactly the holding back; ignoreBOM keeps a leading U+FEFF.
  private decoder = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(private readonly tok: WorldTokenizer) {}

  /** Text completed by this id; '' while a character is still incomplete. Throws UserError for bad ids. */
  push(id: number): string {
    const bytes = this.tok.tokenBytes(id);
    return bytes.length === 0 ? '' : this.decoder.decode(bytes, { stream: true });
  }

  /** Whatever is held back, invalid or incomplete sequences as U+FFFD; the decoder is then empty again. */
  flush(): string {
    return this.decoder.decode();
  }
}
