// ui.js: small DOM and formatting helpers shared by the run viewer, the review pack card
// and the wall. Everything is built with textContent: server data never becomes markup.

/**
 * Create an element. `attrs` keys starting with `on` become listeners, `class` and `text`
 * are shortcuts, `null`/`false` values are skipped.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child);
  }
  return el;
}

/** Display statuses of a run: label, and whether the run is still active. */
export const RUN_STATUS = Object.freeze({
  queued: { label: "Queued", active: true },
  running: { label: "Running", active: true },
  succeeded: { label: "Succeeded", active: false },
  partial: { label: "Partially succeeded", active: false },
  failed: { label: "Failed", active: false },
  blocked: { label: "Blocked", active: false },
  cancelled: { label: "Cancelled", active: false },
  unknown: { label: "Unknown", active: false },
});

/** Stored review pack statuses: label and the badge tone shared with run statuses. */
export const PACK_STATUS = Object.freeze({
  none: { label: "No review pack yet", tone: "unknown" },
  queued: { label: "In progress", tone: "running" },
  generating: { label: "In progress", tone: "running" },
  ready: { label: "Ready", tone: "succeeded" },
  failed: { label: "Failed", tone: "failed" },
  expired: { label: "Expired", tone: "cancelled" },
});

/**
 * @param {string | null | undefined} status
 * @returns {keyof typeof RUN_STATUS}
 */
export function runStatus(status) {
  return status && Object.hasOwn(RUN_STATUS, status)
    ? /** @type {keyof typeof RUN_STATUS} */ (status)
    : "unknown";
}

/** @param {string | null | undefined} status */
export function isActive(status) {
  return RUN_STATUS[runStatus(status)].active;
}

// Icons: simple shapes so that a status is told by shape and text, not by colour alone.
const ICON_PATHS = {
  queued: "M12 3a9 9 0 1 0 0 18a9 9 0 0 0 0-18zm0 2v7l5 3", // clock
  running: "M8 5v14l11-7z", // play
  succeeded: "M4 12l5 5L20 6", // check
  partial: "M12 3a9 9 0 1 0 0 18zM12 3a9 9 0 0 1 0 18", // half disc
  failed: "M6 6l12 12M18 6L6 18", // cross
  blocked: "M12 3a9 9 0 1 0 0 18a9 9 0 0 0 0-18zM6 6l12 12", // no-entry
  cancelled: "M7 7h10v10H7z", // stop square
  unknown: "M9 9a3 3 0 1 1 4 2.8c-.7.3-1 1-1 1.7V15M12 18v.5", // question mark
};
const FILLED = new Set(["running", "cancelled"]);

/**
 * An inline SVG icon for a status tone (decorative: the label carries the meaning).
 * @param {string} tone one of the run display statuses
 * @returns {SVGSVGElement}
 */
export function statusIcon(tone) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.classList.add("icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICON_PATHS[/** @type {keyof typeof ICON_PATHS} */ (tone)] ?? ICON_PATHS.unknown);
  if (FILLED.has(tone)) path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

/**
 * A status badge: icon + text, coloured by tone.
 * @param {string} tone run display status used for colour and icon
 * @param {string} label
 * @returns {HTMLElement}
 */
export function badge(tone, label) {
  return h("span", { class: `badge tone-${tone}` }, statusIcon(tone), h("span", { text: label }));
}

// --- time -----------------------------------------------------------------------------

const exactFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
/** Clock differences between browser and server tolerated for past times, in seconds. */
const CLOCK_SKEW_S = 300;
const UNITS = /** @type {const} */ ([
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
  ["second", 1],
]);

/**
 * "3 minutes ago", "in 2 days", "just now". With `past`, a time slightly in the future (the
 * browser's clock lagging the server's) reads "just now" instead of "in 9 seconds".
 * @param {Date} date
 * @param {number} [now=Date.now()]
 * @param {boolean} [past=false] the time is known to be in the past (created, completed...)
 */
export function relativeTime(date, now = Date.now(), past = false) {
  let seconds = Math.round((date.getTime() - now) / 1000);
  if (past && seconds > 0 && seconds < CLOCK_SKEW_S) seconds = 0;
  if (Math.abs(seconds) < 5) return "just now";
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "second") {
      return relativeFormat.format(Math.trunc(seconds / size), unit);
    }
  }
  return "";
}

/** @param {string | null | undefined} iso */
export function parseTime(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

/**
 * A `<time>` showing a relative time, with the exact time in `title` and `datetime`.
 * It is refreshed by `startRelativeClock()`. Returns a dash for a missing time.
 * @param {string | null | undefined} iso
 * @param {string} [missing="—"]
 * @param {{past?: boolean}} [options] `past`: the time cannot be in the future
 * @returns {HTMLElement}
 */
export function timeEl(iso, missing = "—", { past = true } = {}) {
  const date = parseTime(iso);
  if (!date) return h("span", { class: "muted", text: missing });
  return h("time", {
    datetime: date.toISOString(),
    title: exactFormat.format(date),
    "data-relative": past ? "past" : "",
    text: relativeTime(date, Date.now(), past),
  });
}

/** Re-render every relative `<time>` in the document. */
export function refreshRelativeTimes(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll("time[data-relative]")) {
    const date = parseTime(el.getAttribute("datetime"));
    if (date) el.textContent = relativeTime(date, now, el.getAttribute("data-relative") === "past");
  }
}

/**
 * Keep relative times current (a local timer: it never talks to the server).
 * @param {number} [everyMs=15000]
 */
export function startRelativeClock(everyMs = 15000) {
  return setInterval(() => refreshRelativeTimes(), everyMs);
}

// --- numbers ----------------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat();

/** @param {number | null | undefined} n */
export function fmtNumber(n) {
  return typeof n === "number" && Number.isFinite(n) ? numberFormat.format(n) : "—";
}

/** @param {number | null | undefined} bytes */
export function fmtBytes(bytes) {
  if (typeof bytes !== "number" || !Number.isFinite(bytes)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  const digits = i === 0 || value >= 10 ? 0 : 1;
  return `${value.toFixed(digits)} ${units[i]}`;
}

/**
 * A progress bar: determinate when `progress` is a number, indeterminate otherwise
 * (a `<progress>` without a value). Accessible name via `label`.
 * @param {number | null | undefined} progress 0..1
 * @param {string} label
 * @param {{processed?: number, total?: number}} [counts] shown next to the percentage
 * @param {string} [unknownText="In progress"] shown when the progress is unknown
 */
export function progressBar(progress, label, counts = {}, unknownText = "In progress") {
  const known = typeof progress === "number" && Number.isFinite(progress);
  const pct = known ? Math.round(Math.min(1, Math.max(0, progress)) * 100) : null;
  const bar = h("progress", { max: 100, "aria-label": label, value: pct });
  return h(
    "div",
    { class: "progress" },
    bar,
    h("span", {
      class: "progress-text",
      text: known
        ? `${pct}%` +
          (typeof counts.total === "number"
            ? ` · ${fmtNumber(counts.processed)} of ${fmtNumber(counts.total)}`
            : "")
        : unknownText,
    }),
  );
}

// --- page furniture ---------------------------------------------------------------------

const CONNECTION_LABEL = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  final: "Final: no more updates",
};

/**
 * Render a connection state into the indicator element (`data-connection` is the hook).
 * @param {HTMLElement} el
 * @param {string} state
 * @param {string} [label]
 */
export function showConnection(el, state, label) {
  el.dataset.connection = state;
  el.textContent = "";
  el.append(
    h("span", { class: "dot", "aria-hidden": "true" }),
    h("span", {
      text: label ?? CONNECTION_LABEL[/** @type {keyof typeof CONNECTION_LABEL} */ (state)] ?? state,
    }),
  );
}

/**
 * Announce a message in a polite live region.
 * @param {HTMLElement} region an element with aria-live
 * @param {string} message
 */
export function announce(region, message) {
  // Clearing first makes screen readers repeat an identical message.
  region.textContent = "";
  setTimeout(() => {
    region.textContent = message;
  }, 50);
}

/**
 * The numeric id after `prefix` in the page's path (`/runs/42` -> "42").
 * @param {string} prefix e.g. "/runs/"
 * @param {string} [pathname=location.pathname]
 */
export function idFromPath(prefix, pathname = location.pathname) {
  const rest = pathname.startsWith(prefix) ? pathname.slice(prefix.length) : "";
  const id = decodeURIComponent(rest.split("/")[0] ?? "");
  return /^\d+$/.test(id) ? id : null;
}
