export { WorldTokenizer, VOCAB_FILE, findDefaultVocab } from './world.js';
export { StreamDecoder } from './stream.js';
export { MODEL_VOCAB_SIZE, MAX_TOKEN_BYTES } from './vocab.js';
