// display.js: a wall page opened without a token is a display (docs/displays.md). It pairs
// (a code to approve, and its QR code), keeps the display's credential in localStorage, and
// trades it for short tokens: each renewal opens a second socket with the new token and
// closes the first only once the second has the wall's state, so the wall never blanks.

import { OpsPush } from "./opspush.js";
import { h, showConnection } from "./ui.js";

/** Where the credential lives: it survives reloads and browser restarts. */
export const STORAGE_KEY = "opspush.display";
/** Renew this long before a token expires; a short-lived one, when this share of it is over. */
const RENEW_AT = 0.75;
const RENEW_MARGIN_MS = 30_000;

/**
 * @typedef {{credential: string, id: number, name: string, workspace_id: number}} Stored
 * @typedef {{token: string, expires_at: string, expires_in: number,
 *   display: {id: number, name: string, workspace_id: number}}} Exchanged
 * @typedef {object} DisplaySpec
 * @property {HTMLElement} root the page's `#app`
 * @property {HTMLElement} indicator the connection indicator
 * @property {(root: HTMLElement, client: any, workspaceId: number, name: string) => {destroy: () => void}} mount
 */

/** @returns {Stored | null} */
function stored() {
  try {
    const value = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null");
    return value && typeof value.credential === "string" ? value : null;
  } catch {
    return null;
  }
}

/**
 * @param {string} path
 * @param {object} [body]
 * @returns {Promise<{status: number, data: any}>}
 */
async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
    cache: "no-store",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { status: response.status, data };
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Run the display: pairing until approved, then live until revoked, then pairing again.
 * @param {DisplaySpec} spec
 */
export function startDisplay(spec) {
  const { root, indicator } = spec;
  /** @type {any} */ (window).opspushDisplay = { state: "starting" };
  let generation = 0; // bumped on every change of mode: older loops and timers stop

  /** @param {string} [message] why the display is pairing (signed out, say) */
  async function pair(message) {
    const mine = ++generation;
    localStorage.removeItem(STORAGE_KEY);
    /** @type {any} */ (window).opspushDisplay = { state: "pairing" };
    showConnection(indicator, "final", "Not paired");
    while (mine === generation) {
      let answer;
      try {
        answer = await post("/api/displays/pairings");
      } catch {
        answer = { status: 0, data: null };
      }
      if (mine !== generation) return;
      if (answer.status !== 201) {
        const wait = answer.status === 429 ? 60_000 : 5_000;
        showPairing(root, null, message, answer.status === 429 ? "Too many pairing requests: waiting a minute." : "Cannot reach the server: retrying.");
        await sleep(wait);
        continue;
      }
      const pairing = answer.data;
      showPairing(root, pairing, message);
      const expires = Date.now() + pairing.expires_in * 1000;
      // Poll until approved, or the code expires (then a new one, by itself).
      while (mine === generation && Date.now() < expires) {
        await sleep(pairing.interval * 1000);
        if (mine !== generation) return;
        let polled;
        try {
          polled = await post("/api/displays/pairings/poll", { device_code: pairing.device_code });
        } catch {
          continue; // the network came and went: the code is still good
        }
        if (mine !== generation) return;
        if (polled.status === 200 && polled.data?.status === "approved") {
          const { credential, display } = polled.data;
          /** @type {Stored} */
          const keep = { credential, id: display.id, name: display.name, workspace_id: display.workspace_id };
          localStorage.setItem(STORAGE_KEY, JSON.stringify(keep));
          live(keep);
          return;
        }
        if (polled.status === 410) break; // over: ask for a new code
      }
    }
  }

  /**
   * The credential for a token; `null` when it no longer works (the display pairs again),
   * and a retry with backoff while the server cannot be reached.
   * @param {Stored} keep
   * @param {number} mine
   * @returns {Promise<Exchanged | null>}
   */
  async function exchange(keep, mine) {
    for (let attempt = 0; mine === generation; attempt++) {
      let answer;
      try {
        answer = await post("/api/displays/token", { credential: keep.credential });
      } catch {
        answer = { status: 0, data: null };
      }
      if (mine !== generation) return null;
      if (answer.status === 200) return answer.data;
      if (answer.status === 401) {
        pair("This display was signed out. Pair it again to show the wall.");
        return null;
      }
      await sleep(Math.min(30_000, 1000 * 2 ** attempt) * (0.5 + Math.random() / 2));
    }
    return null;
  }

  /** @param {Stored} keep */
  async function live(keep) {
    const mine = ++generation;
    /** @type {any} */ (window).opspushDisplay = { state: "connecting", display: keep };
    showConnection(indicator, "connecting");
    const first = await exchange(keep, mine);
    if (!first || mine !== generation) return;

    /** @type {OpsPush | null} */
    let current = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    let renewal = null;
    /** @type {any} the view's callbacks, fed by whichever client is current */
    let view = null;
    const ch = `operations:${keep.workspace_id}`;

    /** @param {Exchanged} fresh */
    function client(fresh) {
      /** @type {OpsPush} */
      const made = new OpsPush({
        token: fresh.token,
        // A close with 4401 (revoked, or the token ran out): ask again once.
        refreshToken: async () => (await exchange(keep, mine))?.token ?? null,
        onConnection(state, detail) {
          if (made !== current || mine !== generation) return;
          showConnection(indicator, state);
          // Ended by its subscription's `end` (see `ended`), or signed out (a 401 pairs
          // again): anything else final (4000 early, 1009) starts over with a new token.
          if (state === "final" && !["closed", "ended", "auth"].includes(detail.reason ?? "")) {
            setTimeout(() => mine === generation && live(keep), 2000);
          }
        },
      });
      return made;
    }

    /** @param {Exchanged} fresh */
    function scheduleRenewal(fresh) {
      const left = new Date(fresh.expires_at).getTime() - Date.now();
      const delay = Math.max(1000, left > 4 * RENEW_MARGIN_MS ? left - RENEW_MARGIN_MS : left * RENEW_AT);
      renewal = setTimeout(renew, delay);
    }

    async function renew() {
      renewal = null;
      const fresh = await exchange(keep, mine);
      if (!fresh || mine !== generation) return;
      const next = client(fresh);
      let swapped = false;
      next.subscribe(ch, {
        onState(data, frame) {
          if (!swapped) {
            swapped = true;
            const old = current;
            current = next;
            expose();
            old?.close(); // only now: the new socket already shows the wall
          }
          if (mine === generation) view?.onState?.(data, frame);
        },
        onError(code, message) {
          if (current === next) view?.onError?.(code, message);
        },
        onEnd(reason) {
          if (current === next) ended(reason);
        },
      });
      scheduleRenewal(fresh);
    }

    /** @param {string} reason */
    function ended(reason) {
      view?.onEnd?.(reason);
      // Revoked: the approver lost the wall, or the display was revoked; the credential
      // tells which (a 401 pairs again).
      exchange(keep, mine).then((again) => again && live(keep));
    }

    function expose() {
      /** @type {any} */ (window).opspush = current;
      /** @type {any} */ (window).opspushDisplay = { state: "live", display: keep, client: current };
    }

    // The view subscribes once, to this facade; each client's frames reach it in turn.
    const facade = {
      /** @param {string} _ch @param {any} callbacks */
      subscribe(_ch, callbacks) {
        view = callbacks;
        return { ch, ended: false, lastState: undefined, unsubscribe() {} };
      },
    };
    current = client(first);
    expose();
    const handle = spec.mount(root, facade, keep.workspace_id, first.display.name);
    const owner = current;
    current.subscribe(ch, {
      onState(data, frame) {
        if (owner === current) view?.onState?.(data, frame);
      },
      onError(code, message) {
        if (owner === current) view?.onError?.(code, message);
      },
      onEnd(reason) {
        if (owner === current) ended(reason);
      },
    });
    scheduleRenewal(first);

    // Leaving live mode (a new generation): stop the timer, close the socket, drop the view.
    const watch = setInterval(() => {
      if (mine === generation) return;
      clearInterval(watch);
      if (renewal) clearTimeout(renewal);
      current?.close();
      handle.destroy();
    }, 250);
  }

  const keep = stored();
  if (keep) live(keep);
  else pair();
}

/**
 * @param {HTMLElement} root
 * @param {any} pairing the server's answer, or null while there is none
 * @param {string} [message]
 * @param {string} [problem]
 */
function showPairing(root, pairing, message, problem) {
  const qr = h("div", { class: "pairing-qr", "aria-hidden": "true" });
  if (pairing) {
    // The server drew it (web/displays_api.py): an SVG of our own origin, never user text.
    const svg = new DOMParser().parseFromString(pairing.qr_svg, "image/svg+xml").documentElement;
    qr.append(document.importNode(svg, true));
  }
  root.replaceChildren(
    h(
      "section",
      { class: "pairing", "data-pairing": pairing ? "waiting" : "unavailable" },
      message ? h("p", { class: "notice", role: "alert", "data-signed-out": "", text: message }) : "",
      h("h2", { text: "Pair this display" }),
      pairing
        ? h(
            "div",
            { class: "pairing-body" },
            h(
              "div",
              { class: "pairing-text" },
              h("p", {}, "On a phone or a computer, open ", h("strong", { text: pairing.verification_uri }), " and enter"),
              h("p", { class: "pairing-code", "data-user-code": pairing.user_code, text: pairing.user_code }),
              h("p", { class: "muted", text: "or scan the code. A new code comes by itself every few minutes." }),
            ),
            qr,
          )
        : h("p", { class: "muted", text: problem ?? "Asking for a code…" }),
    ),
  );
}
