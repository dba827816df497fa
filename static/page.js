// page.js: bootstrap shared by the three standalone pages: token, id from the path, the
// OpsPush client and the connection indicator.

import { OpsPush, forgetPageToken, pageToken } from "./opspush.js";
import { h, idFromPath, showConnection, startRelativeClock } from "./ui.js";

/**
 * @typedef {object} PageSpec
 * @property {string} prefix path prefix before the id, e.g. "/runs/"
 * @property {string} noun what the id names, for messages ("run")
 * @property {(root: HTMLElement, client: OpsPush, id: string) => void} mount
 */

/**
 * Start a standalone page. Expects `#app` (the mount point) and `[data-connection]`
 * (the connection indicator) in the document.
 * @param {PageSpec} spec
 * @returns {OpsPush | null}
 */
export function startPage({ prefix, noun, mount }) {
  const root = /** @type {HTMLElement} */ (document.getElementById("app"));
  const indicator = /** @type {HTMLElement} */ (document.querySelector("[data-connection]"));
  const id = idFromPath(prefix);
  const token = pageToken();
  forgetPageToken(); // kept in memory only, for reconnects
  if (!id || !token) {
    showConnection(indicator, "final", "Not connected");
    const text = !id
      ? `This address does not name a ${noun}.`
      : "No access token: open this page with #token=… in the address, or set window.OPSPUSH_TOKEN.";
    root.replaceChildren(h("p", { class: "notice", role: "alert", text }));
    return null;
  }
  const client = new OpsPush({
    token,
    // A host page may supply a refresh hook; a standalone page has no way to renew its token.
    refreshToken: /** @type {any} */ (window).OPSPUSH_REFRESH_TOKEN,
    onConnection(state, detail) {
      const label =
        state === "final" && detail.reason === "auth" ? "Signed out: reload with a new token" : undefined;
      showConnection(indicator, state, label);
      markStale(root, state, detail);
    },
  });
  showConnection(indicator, client.connection);
  /** @type {any} */ (window).opspush = client; // for the console and for host pages
  mount(root, client, id);
  startRelativeClock();
  return client;
}

/**
 * Grey the page's data, and say since when, while it is no longer live: the socket is
 * reconnecting, or closed for good other than by the natural end of what it showed (signed
 * out, server gone). Back live, the mark goes.
 * @param {HTMLElement} root
 * @param {string} state
 * @param {{reason?: string}} detail
 */
function markStale(root, state, detail) {
  const stale = state === "reconnecting" || (state === "final" && detail.reason !== "ended");
  const banner = root.parentElement?.querySelector(".stale-notice");
  if (!stale) {
    delete root.dataset.stale;
    banner?.remove();
    return;
  }
  if (root.dataset.stale) return; // keep the first moment it stopped being live
  const since = new Date();
  root.dataset.stale = since.toISOString();
  const why = detail.reason === "auth" ? "signed out" : state === "reconnecting" ? "reconnecting" : "disconnected";
  root.before(
    h(
      "p",
      { class: "notice stale-notice", role: "status" },
      `Not live since ${since.toLocaleTimeString()} (${why}): what you see below may be out of date.`,
    ),
  );
}
