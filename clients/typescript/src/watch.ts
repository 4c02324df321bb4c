// A watch on one draft: joins its WebSocket, delivers every event once and
// in seq order, and carries that promise across reconnects. It resumes with
// `since=<last seq>`, fills any gap from `GET /events`, drops duplicates,
// backs off with jitter, and follows the server's close codes:
//
//   1001 going away (the replica drains)  -> reconnect at once (elsewhere)
//   1013 try again later (slow consumer, a backend out) -> reconnect, backing off
//   1008 policy (forbidden, ws_limit, bad_message, ...) -> stop, surface the error
//   anything else (network lost, replica died) -> reconnect, backing off
//
// The token callback is asked before every join, so an expired token is
// replaced, never retried.

import { CollabdError } from "./errors.js";
import type { CollabEvent, ErrorFrame, ReadyFrame } from "./types.js";

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed" | "failed";

export interface WatchHandlers {
  /** Each event of the draft, once, in seq order. */
  onEvent(event: CollabEvent): void;
  /** The connection's state, for a UI; `error` is set when it failed. */
  onState?(state: ConnectionState, error?: CollabdError): void;
  /** Every `ready` frame (one per socket). */
  onReady?(ready: ReadyFrame): void;
}

export interface Backoff {
  /** First delay after a failure, in ms. */
  initialMs: number;
  /** Longest delay, in ms. */
  maxMs: number;
}

export interface WatchOptions {
  /** Start after this seq (events 1..since are not delivered). Default 0: the whole history. */
  since?: number;
  backoff?: Partial<Backoff>;
}

/** What a watch needs from its client; `CollabdClient` provides it. */
export interface WatchDeps {
  socketUrl(draftId: string, since: number): Promise<string>;
  eventsAfter(draftId: string, after: number): Promise<CollabEvent[]>;
  WebSocket: WebSocketConstructor;
  random: () => number;
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
}

/** The parts of the platform WebSocket a watch uses. */
export interface SocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => SocketLike;

export const DEFAULT_BACKOFF: Backoff = { initialMs: 250, maxMs: 30_000 };

/** Full jitter: a delay drawn from [0, min(max, initial * 2^attempt)). */
export function backoffDelay(attempt: number, backoff: Backoff, random: () => number): number {
  const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

export class Watch {
  private last: number;
  private socket: SocketLike | undefined;
  private current: ConnectionState = "connecting";
  private attempt = 0;
  private timer: unknown;
  private stopped = false;
  /** Events that arrived ahead of a gap, by seq. */
  private readonly ahead = new Map<number, CollabEvent>();
  /** The gap fill in progress, if any: events are delivered in its turn. */
  private filling: Promise<void> | undefined;
  private readonly backoff: Backoff;

  constructor(
    readonly draftId: string,
    private readonly handlers: WatchHandlers,
    private readonly deps: WatchDeps,
    options: WatchOptions = {},
  ) {
    this.last = options.since ?? 0;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    void this.connect();
  }

  /** The connection's state now. */
  get state(): ConnectionState {
    return this.current;
  }

  /** The seq of the last event delivered. */
  get lastSeq(): number {
    return this.last;
  }

  /** Stops watching: closes the socket, cancels any reconnect. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.deps.clearTimeout(this.timer);
    this.socket?.close(1000, "bye");
    this.setState("closed");
  }

  private setState(state: ConnectionState, error?: CollabdError): void {
    this.current = state;
    this.handlers.onState?.(state, error);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    let url: string;
    try {
      url = await this.deps.socketUrl(this.draftId, this.last);
    } catch (e) {
      // The token callback failed: try again later, as for a lost network.
      return this.retry(false);
    }
    if (this.stopped) return;
    const socket = new this.deps.WebSocket(url);
    this.socket = socket;
    let errorFrame: ErrorFrame | undefined;
    socket.onmessage = (ev) => {
      if (socket !== this.socket) return;
      const frame = parse(ev.data);
      if (frame === undefined) return;
      if (frame.type === "ready") {
        this.attempt = 0;
        this.setState("open");
        this.handlers.onReady?.(frame as unknown as ReadyFrame);
      } else if (frame.type === "error") {
        errorFrame = frame as unknown as ErrorFrame;
      } else if (typeof frame.seq === "number") {
        this.receive(frame as unknown as CollabEvent);
      }
    };
    socket.onclose = (ev) => {
      if (socket !== this.socket || this.stopped) return;
      this.socket = undefined;
      this.closed(ev.code, errorFrame);
    };
    socket.onerror = () => {
      // Some platforms (Node 20's undici, for one) report a failed handshake
      // with an error and no close event: take it as an abnormal close. A
      // close event that follows is then ignored (the socket is not current).
      if (socket !== this.socket || this.stopped) return;
      this.socket = undefined;
      socket.close();
      this.closed(1006, errorFrame);
    };
  }

  /** What to do when the server (or the network) ended the socket. */
  private closed(code: number, errorFrame: ErrorFrame | undefined): void {
    if (code === 1008) {
      const error = new CollabdError(
        errorFrame?.code ?? "policy",
        errorFrame?.message ?? "the server refused the socket",
      );
      this.stopped = true;
      this.setState("failed", error);
      return;
    }
    // 1001: the replica drains; another one is ready at once.
    this.retry(code === 1001);
  }

  private retry(now: boolean): void {
    if (this.stopped) return;
    this.setState("reconnecting");
    const delay = now ? 0 : backoffDelay(this.attempt, this.backoff, this.deps.random);
    this.attempt += 1;
    this.timer = this.deps.setTimeout(() => void this.connect(), delay);
  }

  /** One event from the socket: delivered, held ahead of a gap, or dropped. */
  private receive(event: CollabEvent): void {
    if (event.seq <= this.last) return;
    this.ahead.set(event.seq, event);
    if (this.filling === undefined) this.drain();
  }

  /** Delivers held events while they continue the log; at a gap, fills it. */
  private drain(): void {
    for (;;) {
      const next = this.ahead.get(this.last + 1);
      if (next !== undefined) {
        this.ahead.delete(next.seq);
        this.deliver(next);
        continue;
      }
      for (const seq of this.ahead.keys()) if (seq <= this.last) this.ahead.delete(seq);
      if (this.ahead.size === 0) return;
      if (this.stopped) return;
      this.filling = this.fill().finally(() => {
        this.filling = undefined;
        this.drain();
      });
      return;
    }
  }

  /** Reads the missing events from the log until the gap is closed. */
  private async fill(): Promise<void> {
    const until = Math.min(...this.ahead.keys());
    while (!this.stopped && this.last + 1 < until) {
      const before = this.last;
      try {
        const events = await this.deps.eventsAfter(this.draftId, this.last);
        for (const event of events) {
          if (event.seq === this.last + 1 && event.seq < until) this.deliver(event);
        }
      } catch {
        // The store or the network is out: the pause below, then again.
      }
      if (this.last === before) {
        // No progress: the log does not answer, or does not hold them yet.
        await new Promise<void>((resolve) =>
          this.deps.setTimeout(resolve, backoffDelay(1, this.backoff, this.deps.random)),
        );
      }
    }
  }

  private deliver(event: CollabEvent): void {
    this.last = event.seq;
    this.handlers.onEvent(event);
  }
}

function parse(data: unknown): Record<string, unknown> & { type?: unknown; seq?: unknown } | undefined {
  if (typeof data !== "string") return undefined;
  try {
    const value: unknown = JSON.parse(data);
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
