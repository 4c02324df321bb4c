// A watch on one draft: joins its WebSocket, delivers every event once and
// in seq order, and carries that promise across reconnects. It resumes with
// `since=<last seq>`, fills any gap from `GET /events`, drops duplicates,
// backs off with jitter, and follows the server's close codes:
//
//   1001 going away (the replica drains)  -> reconnect soon (elsewhere), jittered
//   1013 try again later (slow consumer, a backend out) -> reconnect, backing off
//   1008 policy (forbidden, ws_limit, bad_message, ...) -> stop, surface the error
//   anything else (network lost, replica died) -> reconnect, backing off
//
// A refusal before the upgrade (a revoked collaborator, a deleted draft)
// reaches a browser as a bare 1006; after a few joins that never got
// `ready`, the watch asks the REST API, which answers with the reason, and
// stops on 401/403/404. The backoff resets only after a socket stayed open a
// while, so a client closed again and again backs off. The token callback
// is asked before every join, so an expired token is replaced.

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
  /** Asks the REST API about the draft; rejects with its refusal, if any. */
  probe(draftId: string): Promise<void>;
  now: () => number;
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

/** A socket that stayed open this long resets the backoff. */
const STABLE_MS = 30_000;
/** Joins in a row that never got `ready` before the watch asks the REST API why. */
const PROBE_AFTER = 3;
/** Refusals that no retry will change. */
const PERMANENT = new Set([401, 403, 404]);

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
  /** The pause of a gap fill that made no progress. */
  private pause: unknown;
  private stopped = false;
  /** When the current socket got `ready` (undefined: it has not). */
  private openedAt: number | undefined;
  /** Joins in a row that ended before `ready`. */
  private unjoined = 0;
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
    if (!this.stopped) this.stop("closed");
  }

  private fail(error: CollabdError): void {
    this.stop("failed", error);
  }

  /** The one way a watch ends: nothing runs or arrives after it. */
  private stop(state: "closed" | "failed", error?: CollabdError): void {
    this.stopped = true;
    this.deps.clearTimeout(this.timer);
    this.deps.clearTimeout(this.pause);
    const socket = this.socket;
    this.socket = undefined;
    socket?.close(1000, "bye");
    this.setState(state, error);
  }

  private setState(state: ConnectionState, error?: CollabdError): void {
    this.current = state;
    this.handlers.onState?.(state, error);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    if (this.unjoined >= PROBE_AFTER && (await this.refusedForGood())) return;
    let url: string;
    let socket: SocketLike;
    try {
      url = await this.deps.socketUrl(this.draftId, this.last);
      if (this.stopped) return;
      socket = new this.deps.WebSocket(url);
    } catch {
      // The token callback failed, or the URL: try again later.
      return this.retry("backoff");
    }
    this.socket = socket;
    this.openedAt = undefined;
    let errorFrame: ErrorFrame | undefined;
    socket.onmessage = (ev) => {
      if (socket !== this.socket) return;
      const frame = parse(ev.data);
      if (frame === undefined) return;
      if (this.stopped) return;
      if (frame.type === "ready") {
        this.openedAt = this.deps.now();
        this.unjoined = 0;
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
      return this.fail(
        new CollabdError(errorFrame?.code ?? "policy", errorFrame?.message ?? "the server refused the socket"),
      );
    }
    if (this.openedAt === undefined) {
      this.unjoined += 1;
    } else if (this.deps.now() - this.openedAt >= STABLE_MS) {
      this.attempt = 0;
    }
    // 1001: the replica drains; another one is ready now (spread the herd).
    this.retry(code === 1001 ? "soon" : "backoff");
  }

  private retry(how: "soon" | "backoff"): void {
    if (this.stopped) return;
    this.setState("reconnecting");
    const delay =
      how === "soon"
        ? Math.floor(this.deps.random() * this.backoff.initialMs)
        : backoffDelay(this.attempt, this.backoff, this.deps.random);
    this.attempt += 1;
    this.timer = this.deps.setTimeout(() => void this.connect(), delay);
  }

  /** Asks the REST API why joins keep failing; true when it refused for good. */
  private async refusedForGood(): Promise<boolean> {
    try {
      await this.deps.probe(this.draftId);
    } catch (e) {
      if (e instanceof CollabdError && PERMANENT.has(e.status) && !this.stopped) {
        this.fail(e);
        return true;
      }
    }
    return this.stopped;
  }

  /** One event from the socket: delivered, held ahead of a gap, or dropped. */
  private receive(event: CollabEvent): void {
    if (event.seq <= this.last) return;
    this.ahead.set(event.seq, event);
    this.drain();
  }

  /**
   * Delivers held events while they continue the log (even while a gap
   * fill waits on the log: a replay over a new socket may close the gap
   * first); at a gap, starts the one fill.
   */
  private drain(): void {
    while (!this.stopped) {
      const next = this.ahead.get(this.last + 1);
      if (next !== undefined) {
        this.ahead.delete(next.seq);
        this.deliver(next);
        continue;
      }
      for (const seq of this.ahead.keys()) if (seq <= this.last) this.ahead.delete(seq);
      if (this.ahead.size === 0 || this.filling !== undefined) return;
      this.filling = this.fill().finally(() => {
        this.filling = undefined;
        this.drain();
      });
      return;
    }
  }

  /** Reads the missing events from the log until the gap is closed. */
  private async fill(): Promise<void> {
    let failures = 0;
    while (!this.stopped && this.ahead.size > 0 && !this.ahead.has(this.last + 1)) {
      const before = this.last;
      try {
        const events = await this.deps.eventsAfter(this.draftId, this.last);
        for (const event of events) {
          if (this.stopped) return;
          if (event.seq === this.last + 1) this.deliver(event);
        }
      } catch (e) {
        if (e instanceof CollabdError && PERMANENT.has(e.status)) return this.fail(e);
      }
      if (this.last === before) {
        // No progress: the log does not answer, or does not hold them yet.
        failures += 1;
        await new Promise<void>((resolve) => {
          this.pause = this.deps.setTimeout(resolve, backoffDelay(failures, this.backoff, this.deps.random));
        });
      }
    }
  }

  private deliver(event: CollabEvent): void {
    if (this.stopped) return;
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
