// opspush.js: the browser client for the opspush WebSocket protocol (version 1).
// An ES module with no dependencies. One OpsPush instance holds one socket that carries any
// number of subscriptions; it pauses them while the tab is hidden, reconnects with
// full-jitter exponential backoff, and never polls.

/**
 * Connection states reported to `onConnection`:
 * - `connecting`: first connection attempt, before the server's `welcome`;
 * - `live`: authenticated, subscriptions are being pushed;
 * - `reconnecting`: the socket dropped and a new attempt is scheduled or under way;
 * - `final`: nothing more will arrive (every subscription ended, close 4000/1009,
 *   authentication could not be renewed, or `close()` was called).
 * @typedef {"connecting" | "live" | "reconnecting" | "final"} ConnectionState
 */

/**
 * @typedef {object} ConnectionDetail
 * @property {number} [code] close code of the socket that dropped, when there was one
 * @property {number} [delay] milliseconds until the next attempt (`reconnecting` only)
 * @property {string} [reason] why the connection became `final`:
 *   `ended` (no subscription left), `closed` (close() was called), `auth` (4401 without a
 *   new token), `too_large` (1009), `server` (4000)
 */

/**
 * Callbacks of one subscription. `onState` gets the channel's `data` each time the server
 * pushes a change (and once at once after subscribing or resuming). `onEnd` is called once
 * when the subscription is over; after it nothing more is delivered for that handle.
 * `onError` gets refusals (`not_found`, `forbidden`, ...). A refusal other than
 * `rate_limited` also ends the subscription: `onEnd` follows with reason `error`.
 * @typedef {object} SubscriptionCallbacks
 * @property {(data: any, frame: {ch: string, interval: number | null}) => void} [onState]
 * @property {(reason: "terminal" | "revoked" | "gone" | "error") => void} [onEnd]
 * @property {(code: string, message: string) => void} [onError]
 */

/**
 * @typedef {object} Subscription
 * @property {string} ch the channel, e.g. `run:42`
 * @property {boolean} ended true once the subscription is over or unsubscribed
 * @property {any} lastState the last `data` received, or `undefined`
 * @property {() => void} unsubscribe stop receiving (idempotent)
 */

/**
 * @typedef {object} OpsPushOptions
 * @property {string} [url] WebSocket URL; defaults to `/ws` on the page's origin
 *   (`wss:` on https pages)
 * @property {string} [token] the bearer token sent in `hello`
 * @property {() => string | Promise<string>} [getToken] called before every connection
 *   attempt instead of using `token`
 * @property {() => string | null | Promise<string | null>} [refreshToken] called after the
 *   server closed with 4401; return a new token to reconnect with, or null to give up
 * @property {(state: ConnectionState, detail: ConnectionDetail) => void} [onConnection]
 * @property {(code: string, message: string) => void} [onError] socket-level errors
 *   (error frames without a channel)
 * @property {boolean} [pauseWhenHidden=true] pause all subscriptions while the page is hidden
 * @property {number} [backoffBase=500] first backoff ceiling in ms (doubles per attempt)
 * @property {number} [backoffMax=20000] backoff ceiling in ms
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (for tests)
 */

/** Close codes of the protocol. */
export const CLOSE = Object.freeze({
  ENDED: 4000,
  AUTH: 4401,
  HELLO_TIMEOUT: 4408,
  TOO_MANY: 4429,
  TOO_LARGE: 1009,
  RESTART: 1012,
});

/** Refusals after which a subscription is dead (retrying cannot help). */
const FATAL_ERRORS = new Set([
  "not_found",
  "forbidden",
  "bad_request",
  "unknown_channel",
  "too_many_subscriptions",
]);

/** Consecutive 4401 closes before a welcome after which we give up. */
const MAX_AUTH_FAILURES = 3;

/**
 * Full-jitter exponential backoff: a uniformly random delay in [0, min(max, base * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {number} [base=500]
 * @param {number} [max=20000]
 * @param {() => number} [random=Math.random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, base = 500, max = 20000, random = Math.random) {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * The token a standalone page was opened with: `#token=...` in the URL fragment (never sent
 * to the server in a request line), else `window.OPSPUSH_TOKEN` set by a host page.
 * @param {Location} [loc=location]
 * @returns {string | null}
 */
export function pageToken(loc = globalThis.location) {
  const fromHash = new URLSearchParams((loc?.hash ?? "").replace(/^#/, "")).get("token");
  return fromHash || /** @type {any} */ (globalThis).OPSPUSH_TOKEN || null;
}

/**
 * Take `token=` out of the address bar and the current history entry once it has been read
 * (other fragment parameters stay): the fragment never reaches the server, but it would
 * stay on screen, in the history, in bookmarks and in screenshots.
 * @param {Location} [loc=location]
 * @param {History} [hist=history]
 */
export function forgetPageToken(loc = globalThis.location, hist = globalThis.history) {
  const params = new URLSearchParams((loc?.hash ?? "").replace(/^#/, ""));
  if (!params.has("token") || !hist) return;
  params.delete("token");
  const rest = params.toString();
  hist.replaceState(hist.state, "", `${loc.pathname}${loc.search}${rest ? `#${rest}` : ""}`);
}

/**
 * The default WebSocket URL: `/ws` on the page's origin.
 * @param {Location} [loc=location]
 * @returns {string}
 */
export function defaultUrl(loc = globalThis.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/** One server-side subscription, shared by every handle on the same channel. */
class Channel {
  /** @param {string} ch */
  constructor(ch) {
    this.ch = ch;
    /** @type {Set<{cb: SubscriptionCallbacks, handle: Subscription}>} */
    this.listeners = new Set();
    /** @type {any} */
    this.lastState = undefined;
    this.interval = /** @type {number | null} */ (null);
  }
}

export class OpsPush {
  /** @param {OpsPushOptions} [options] */
  constructor(options = {}) {
    this.options = options;
    this.url = options.url ?? defaultUrl();
    this.token = options.token ?? null;
    /** @type {Map<string, Channel>} */
    this.channels = new Map();
    /** @type {Set<string>} why we are paused (`hidden`, `modal`) */
    this.pauseReasons = new Set();
    /** @type {ConnectionState} */
    this.connection = "connecting";
    /** @type {WebSocket | null} */
    this.ws = null;
    this.welcomed = false;
    this.attempt = 0;
    this.authFailures = 0;
    this.closed = false;
    /** true from the decision to connect until the socket exists (token lookups are async) */
    this.pending = false;
    /** true while a reconnect waits for the hidden page to become visible again */
    this.deferred = false;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
    /** @type {{user_id: number, expires_at: string} | null} */
    this.session = null;

    this._onVisibility = () => this._syncVisibility();
    this._onOnline = () => this._retryNow();
    if (options.pauseWhenHidden !== false && typeof document !== "undefined") {
      document.addEventListener("visibilitychange", this._onVisibility);
      this._syncVisibility();
    }
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
  }

  /**
   * Watch a channel (`run:<id>`, `review-pack:<tenant id>`, `operations:<workspace id>`).
   * Opens the socket if needed. Several handles on one channel share one server
   * subscription; a late handle gets the last state at once.
   * @param {string} ch
   * @param {SubscriptionCallbacks} [callbacks]
   * @returns {Subscription}
   */
  subscribe(ch, callbacks = {}) {
    if (this.closed) throw new Error("OpsPush: subscribe() after close()");
    let channel = this.channels.get(ch);
    const isNew = !channel;
    if (!channel) {
      channel = new Channel(ch);
      this.channels.set(ch, channel);
    }
    const chan = channel;
    /** @type {Subscription} */
    const handle = {
      ch,
      ended: false,
      get lastState() {
        return chan.lastState;
      },
      unsubscribe: () => this._unsubscribe(chan, entry),
    };
    const entry = { cb: callbacks, handle };
    chan.listeners.add(entry);

    if (isNew) {
      if (this._isOpen()) this._sendSubscribe(ch);
      else this._ensureSocket();
    } else if (chan.lastState !== undefined) {
      const data = chan.lastState;
      queueMicrotask(() => {
        if (!handle.ended) callbacks.onState?.(data, { ch, interval: chan.interval });
      });
    }
    return handle;
  }

  /**
   * Pause every subscription: the server reads nothing on our behalf until `resume`.
   * Reasons stack: the tab being hidden and a modal being open are tracked separately, and
   * the server is resumed only when none is left.
   * @param {"modal" | "hidden"} [reason="modal"]
   */
  pause(reason = "modal") {
    if (this.pauseReasons.has(reason)) return;
    const wasPaused = this.paused;
    this.pauseReasons.add(reason);
    if (!wasPaused && this._isOpen()) this._send({ op: "pause", reason });
  }

  /**
   * Undo `pause(reason)`; when no reason is left the server pushes the current state at once.
   * @param {"modal" | "hidden"} [reason="modal"]
   */
  resume(reason = "modal") {
    if (!this.pauseReasons.delete(reason)) return;
    if (!this.paused && this._isOpen()) this._send({ op: "resume" });
  }

  /** @returns {boolean} whether any pause reason is active */
  get paused() {
    return this.pauseReasons.size > 0;
  }

  /** Close the socket and end every subscription without callbacks. Final. */
  close() {
    if (this.closed) return;
    this.closed = true;
    for (const channel of this.channels.values()) {
      for (const { handle } of channel.listeners) handle.ended = true;
    }
    this.channels.clear();
    this._teardown(1000);
    if (typeof document !== "undefined") {
      document.removeEventListener("visibilitychange", this._onVisibility);
    }
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    this._setConnection("final", { reason: "closed" });
  }

  // --- connection -------------------------------------------------------------------------

  _isOpen() {
    return this.ws !== null && this.welcomed && this.ws.readyState === 1;
  }

  _ensureSocket() {
    if (this.ws || this.pending || this.closed) return;
    if (this.connection === "final") this._setConnection("connecting", {});
    this._connect();
  }

  async _connect() {
    this.timer = null;
    if (this.pauseReasons.has("hidden")) {
      // A hidden page connects (and costs the server reads) only once it is seen again.
      this.deferred = true;
      this.pending = true;
      return;
    }
    this.pending = true;
    let token;
    try {
      token = this.options.getToken ? await this.options.getToken() : this.token;
    } catch {
      token = null;
    }
    this.pending = false;
    if (this.closed || this.channels.size === 0 || this.ws) return;
    const Impl = this.options.WebSocket ?? globalThis.WebSocket;
    const ws = new Impl(this.url);
    this.ws = ws;
    this.welcomed = false;
    ws.onopen = () => ws.send(JSON.stringify({ op: "hello", token }));
    ws.onmessage = (ev) => {
      if (this.ws === ws) this._onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this._onClose(ev.code);
    };
    ws.onerror = () => {}; // a close event always follows
  }

  /** @param {number} code */
  async _onClose(code) {
    const wasWelcomed = this.welcomed;
    this.ws = null;
    this.welcomed = false;
    this.pending = true; // until _schedule() or a final state decides what happens next
    try {
      await this._afterClose(code, wasWelcomed);
    } finally {
      if (!this.timer) this.pending = false;
    }
  }

  /**
   * @param {number} code
   * @param {boolean} wasWelcomed
   */
  async _afterClose(code, wasWelcomed) {
    if (this.closed) return;
    if (this.channels.size === 0) {
      this._setConnection("final", { reason: "ended", code });
      return;
    }
    if (code === CLOSE.ENDED) {
      // The server ended our last subscription; anything left never got its `end`.
      this._setConnection("final", { reason: "server", code });
      return;
    }
    if (code === CLOSE.TOO_LARGE) {
      this._setConnection("final", { reason: "too_large", code });
      return;
    }
    if (code === CLOSE.AUTH) {
      this.authFailures = wasWelcomed ? 1 : this.authFailures + 1;
      const fresh = await this._refreshToken();
      if (this.closed) return;
      if (!fresh || this.authFailures > MAX_AUTH_FAILURES) {
        this._setConnection("final", { reason: "auth", code });
        return;
      }
      this.token = fresh;
      // The first retry with a fresh token is immediate; repeated rejections back off.
      this._schedule(this.authFailures === 1 ? 0 : this._nextDelay(), code);
      return;
    }
    if (wasWelcomed) this.attempt = 0;
    this._schedule(code === CLOSE.TOO_MANY ? this._longDelay() : this._nextDelay(), code);
  }

  async _refreshToken() {
    const hook = this.options.refreshToken;
    if (!hook) return null;
    try {
      return (await hook()) || null;
    } catch {
      return null;
    }
  }

  _nextDelay() {
    const { backoffBase = 500, backoffMax = 20000 } = this.options;
    return backoffDelay(this.attempt++, backoffBase, backoffMax);
  }

  /** After 4429 (too many connections or messages): between half and 1.5 times the ceiling. */
  _longDelay() {
    const max = this.options.backoffMax ?? 20000;
    this.attempt++;
    return Math.floor(max / 2 + Math.random() * max);
  }

  /**
   * @param {number} delay
   * @param {number} code
   */
  _schedule(delay, code) {
    this._setConnection("reconnecting", { code, delay });
    this.pending = true;
    this.timer = setTimeout(() => this._connect(), delay);
  }

  /** The browser came back online: do not wait out the backoff. */
  _retryNow() {
    if (this.timer && this.connection === "reconnecting") {
      clearTimeout(this.timer);
      this.timer = null;
      this._connect();
    }
  }

  /** @param {number} code */
  _teardown(code) {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.pending = false;
    this.deferred = false;
    const ws = this.ws;
    this.ws = null;
    this.welcomed = false;
    if (ws && ws.readyState <= 1) ws.close(code);
  }

  /**
   * @param {ConnectionState} state
   * @param {ConnectionDetail} detail
   */
  _setConnection(state, detail) {
    if (this.connection === state && state !== "reconnecting") return;
    this.connection = state;
    this.options.onConnection?.(state, detail);
  }

  // --- frames -----------------------------------------------------------------------------

  /** @param {object} frame */
  _send(frame) {
    this.ws?.send(JSON.stringify(frame));
  }

  /** @param {string} ch */
  _sendSubscribe(ch) {
    this._send({ op: "subscribe", ch });
    if (this.paused) this._send({ op: "pause", ch, reason: this._pauseReason() });
  }

  _pauseReason() {
    return this.pauseReasons.has("modal") ? "modal" : "hidden";
  }

  /** @param {string} raw */
  _onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "state":
        return this._onState(frame);
      case "end":
        return this._onEnd(frame.ch, frame.reason);
      case "error":
        return this._onError(frame);
    }
  }

  /** @param {{user_id: number, expires_at: string}} frame */
  _onWelcome(frame) {
    this.welcomed = true;
    this.authFailures = 0;
    this.session = { user_id: frame.user_id, expires_at: frame.expires_at };
    this._setConnection("live", {});
    for (const ch of this.channels.keys()) this._send({ op: "subscribe", ch });
    if (this.paused) this._send({ op: "pause", reason: this._pauseReason() });
  }

  /** @param {{ch: string, data: any, interval: number | null}} frame */
  _onState(frame) {
    const channel = this.channels.get(frame.ch);
    if (!channel) return;
    channel.lastState = frame.data;
    channel.interval = frame.interval ?? null;
    for (const { cb } of [...channel.listeners]) {
      cb.onState?.(frame.data, { ch: frame.ch, interval: channel.interval });
    }
  }

  /**
   * @param {string} ch
   * @param {any} reason
   */
  _onEnd(ch, reason) {
    const channel = this.channels.get(ch);
    if (!channel) return;
    this.channels.delete(ch);
    for (const { cb, handle } of channel.listeners) {
      handle.ended = true;
      cb.onEnd?.(reason);
    }
    if (this.channels.size === 0) this._finish();
  }

  /** @param {{ch?: string, code: string, message: string}} frame */
  _onError(frame) {
    const channel = frame.ch ? this.channels.get(frame.ch) : undefined;
    if (!channel) {
      this.options.onError?.(frame.code, frame.message);
      return;
    }
    for (const { cb } of [...channel.listeners]) cb.onError?.(frame.code, frame.message);
    if (FATAL_ERRORS.has(frame.code)) this._onEnd(channel.ch, "error");
  }

  /**
   * @param {Channel} channel
   * @param {{cb: SubscriptionCallbacks, handle: Subscription}} entry
   */
  _unsubscribe(channel, entry) {
    if (entry.handle.ended) return;
    entry.handle.ended = true;
    channel.listeners.delete(entry);
    if (channel.listeners.size > 0 || this.channels.get(channel.ch) !== channel) return;
    this.channels.delete(channel.ch);
    if (this._isOpen()) this._send({ op: "unsubscribe", ch: channel.ch });
    if (this.channels.size === 0) this._finish();
  }

  /** No subscription left: close the socket; a later subscribe() opens a new one. */
  _finish() {
    this._teardown(1000);
    this._setConnection("final", { reason: "ended" });
  }

  _syncVisibility() {
    if (document.visibilityState === "hidden") {
      this.pause("hidden");
      return;
    }
    this.resume("hidden");
    if (this.deferred) {
      this.deferred = false;
      this._connect();
    }
  }
}
