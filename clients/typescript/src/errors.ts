/** An error the server answered with its envelope, or one the client met on the way. */
export class CollabdError extends Error {
  /** The envelope's stable code (`ring_required`, `unavailable`, ...), or `network`. */
  readonly code: string;
  /** The HTTP status; 0 when no response arrived. */
  readonly status: number;
  /** The server's request id, to quote in a support request. */
  readonly requestId: string | undefined;

  /** How long the server asked us to wait (`Retry-After`), in ms, if it did. */
  readonly retryAfterMs: number | undefined;

  constructor(code: string, message: string, status = 0, requestId?: string, retryAfterMs?: number) {
    super(message);
    this.name = "CollabdError";
    this.code = code;
    this.status = status;
    this.requestId = requestId;
    this.retryAfterMs = retryAfterMs;
  }

  /** Whether the same request may succeed if sent again (with the same idempotency key). */
  get retryable(): boolean {
    return this.code === "network" || this.status === 502 || this.status === 503 || this.status === 504 || this.status === 429;
  }
}
