/**
 * An error caused by the user's input (a bad file, a wrong flag, an id out of range).
 * The CLI prints its message as one line and exits non-zero, without a stack trace;
 * any other error is a bug and is shown in full.
 */
export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

export function fail(message: string): never {
  throw new UserError(message);
}
