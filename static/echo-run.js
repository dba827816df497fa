// echo-run.js: the run viewer of /echo/runs/{id}, fed by Laravel Echo over the Pusher
// protocol instead of opspush's own client: what a console page does with Echo.
//   /echo/runs/42#key=<OPSPUSH_PUSHER_KEY>&auth=<the host's /broadcasting/auth URL>
import { mountRunViewer } from "./run-viewer.js";
import { h, idFromPath, showConnection, startRelativeClock } from "./ui.js";

const STATUS_CODES = { 401: "forbidden", 403: "forbidden", 404: "not_found" };
const CONNECTION = { initialized: "connecting", connecting: "connecting", connected: "live",
  unavailable: "reconnecting", failed: "final", disconnected: "final" };

/**
 * An Echo connection seen through the one method the run viewer uses: `subscribe(ch, handlers)`.
 * `run:42` is Echo's `private('opspush.run.42')`; its events are `.opspush.state` and `.opspush.end`.
 * As with opspush's own client, a subscription is over after `end` or a refusal, and when the
 * last one is over the connection is closed: nothing more will come, so the page is final.
 * @param {any} echo
 */
export function echoClient(echo) {
  let open = 0;
  return {
    subscribe(/** @type {string} */ ch, /** @type {any} */ handlers) {
      const name = `opspush.${ch.replace(":", ".")}`;
      let over = false;
      const finish = () => {
        if (over) return;
        over = true;
        echo.leave(name);
        open -= 1;
        if (open === 0) echo.disconnect(); // pusher-js then says "disconnected": final
      };
      open += 1;
      echo
        .private(name)
        .listen(".opspush.state", (/** @type {any} */ p) =>
          handlers.onState?.(p.data, { ch, interval: p.interval }))
        .listen(".opspush.end", (/** @type {any} */ p) => {
          handlers.onEnd?.(p.reason);
          finish();
        })
        .error((/** @type {any} */ e) => {
          const status = e?.status ?? 0;
          const code = STATUS_CODES[/** @type {keyof typeof STATUS_CODES} */ (status)] ?? "error";
          handlers.onError?.(code, e?.error ?? `refused (${status})`);
          finish();
        });
      return { unsubscribe: finish };
    },
  };
}

function start() {
  const root = /** @type {HTMLElement} */ (document.getElementById("app"));
  const indicator = /** @type {HTMLElement} */ (document.querySelector("[data-connection]"));
  const params = new URLSearchParams(location.hash.slice(1));
  const id = idFromPath("/echo/runs/");
  const key = params.get("key");
  const auth = params.get("auth");
  if (!id || !key || !auth) {
    showConnection(indicator, "final", "Not connected");
    const text = !id ? "This address does not name a run." : "Open this page with #key=…&auth=… in the address.";
    root.replaceChildren(h("p", { class: "notice", role: "alert", text }));
    return;
  }
  const Echo = /** @type {any} */ (window).Echo.default;
  const echo = new Echo({
    broadcaster: "pusher",
    Pusher: /** @type {any} */ (window).Pusher,
    key,
    cluster: "mt1",
    wsHost: location.hostname,
    wsPort: Number(location.port) || (location.protocol === "https:" ? 443 : 80),
    wssPort: Number(location.port) || 443,
    forceTLS: location.protocol === "https:",
    enabledTransports: ["ws", "wss"],
    disableStats: true,
    authEndpoint: auth,
  });
  echo.connector.pusher.connection.bind("state_change", (/** @type {any} */ s) =>
    showConnection(indicator, /** @type {any} */ (CONNECTION)[s.current] ?? "connecting"));
  /** @type {any} */ (window).echo = echo;
  mountRunViewer(root, { client: /** @type {any} */ (echoClient(echo)), runId: id, setTitle: true });
  startRelativeClock();
}

start();
