// wall.js: the ops wall display, /wall/{workspace_id}: full screen, a clock, live runs.
// Opened without a token (/wall, or /wall/{id}), it is a paired display: see display.js.
import { startDisplay } from "./display.js";
import { pageToken } from "./opspush.js";
import { startPage } from "./page.js";
import { mountWall } from "./wall-view.js";

const clock = /** @type {HTMLElement} */ (document.getElementById("clock"));
const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});
const dateFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });

function tick() {
  const now = new Date();
  clock.textContent = timeFormat.format(now);
  clock.setAttribute("datetime", now.toISOString());
  clock.title = dateFormat.format(now);
  // Align the next tick with the next wall-clock second.
  setTimeout(tick, 1000 - (now.getTime() % 1000) + 5);
}
tick();

/** @param {string | number} id @param {string} name */
function titled(id, name) {
  const heading = document.getElementById("wall-title");
  if (heading) heading.textContent = `${name} · Operations`;
  document.title = `Wall · ${name} · opspush`;
  return heading ?? undefined;
}

if (!pageToken()) {
  startDisplay({
    root: /** @type {HTMLElement} */ (document.getElementById("app")),
    indicator: /** @type {HTMLElement} */ (document.querySelector("[data-connection]")),
    mount(root, client, workspaceId, displayName) {
      titled(workspaceId, displayName);
      return mountWall(root, { client, workspaceId, onName: (name) => titled(workspaceId, name) });
    },
  });
} else startPage({
  prefix: "/wall/",
  noun: "workspace",
  mount(root, client, id) {
    const heading = document.getElementById("wall-title");
    if (heading) heading.textContent = `Workspace ${id} · Operations`;
    document.title = `Wall · Workspace ${id} · opspush`;
    mountWall(root, {
      client,
      workspaceId: id,
      onName(name) {
        if (heading) heading.textContent = `${name} · Operations`;
        document.title = `Wall · ${name} · opspush`;
      },
    });
  },
});

// Full screen on demand (browsers require a user gesture), and keep the screen awake.
const fullscreen = document.getElementById("fullscreen");
if (fullscreen && document.fullscreenEnabled) {
  fullscreen.hidden = false;
  fullscreen.addEventListener("click", () => document.documentElement.requestFullscreen?.());
  document.addEventListener("fullscreenchange", () => {
    fullscreen.hidden = Boolean(document.fullscreenElement);
  });
}

/** @type {any} */
let wakeLock = null;
async function keepAwake() {
  try {
    wakeLock = await /** @type {any} */ (navigator).wakeLock?.request("screen");
    wakeLock?.addEventListener("release", () => {
      wakeLock = null;
    });
  } catch {
    wakeLock = null; // not supported or not allowed: the wall still works
  }
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && !wakeLock) keepAwake();
});
keepAwake();
