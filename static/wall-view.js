// wall-view.js: the live list of a workspace's runs for the ops wall display.

import {
  RUN_STATUS,
  badge,
  fmtNumber,
  h,
  isActive,
  parseTime,
  progressBar,
  runStatus,
  timeEl,
} from "./ui.js";

/** @typedef {import("./opspush.js").OpsPush} OpsPush */

/** Finished runs stay on the wall this long after `completed_at`. */
export const RECENT_MS = 15 * 60 * 1000;
/** A run that finished while the wall watched is highlighted this long. */
const FRESH_MS = 60 * 1000;

const ERROR_MESSAGES = {
  not_found: "This workspace does not exist, or you are not a member of it.",
  forbidden: "You do not have permission to view operations of this workspace.",
};

/**
 * Mount the wall's run lists into `root` and subscribe to `operations:<workspaceId>`.
 * Active runs come first with their progress, then runs finished in the last 15 minutes.
 * Each run row carries `data-run-id`; its status badge carries `data-status`; the two lists
 * carry `data-list="active"` and `data-list="recent"`.
 * @param {HTMLElement} root
 * @param {{client: OpsPush, workspaceId: string | number, onName?: (name: string) => void}} options
 *   `onName` gets the workspace's name once a run has told it
 * @returns {{destroy: () => void}}
 */
export function mountWall(root, { client, workspaceId, onName }) {
  const activeCount = h("span", { class: "count" });
  const recentCount = h("span", { class: "count" });
  const activeList = h("ol", {
    class: "wall-list",
    "aria-labelledby": "wall-active-h",
    "data-list": "active",
  });
  const recentList = h("ol", {
    class: "wall-list",
    "aria-labelledby": "wall-recent-h",
    "data-list": "recent",
  });
  const notice = h("div", { class: "wall-notice" });
  const live = h("p", { class: "sr-only", role: "status", "aria-live": "polite" });
  root.replaceChildren(
    notice,
    h(
      "section",
      { class: "wall-section" },
      h("h2", { id: "wall-active-h" }, "Active ", activeCount),
      activeList,
    ),
    h(
      "section",
      { class: "wall-section" },
      h("h2", { id: "wall-recent-h" }, "Finished in the last 15 minutes ", recentCount),
      recentList,
    ),
    live,
  );
  activeList.append(emptyRow("Loading…"));

  /** @type {any[]} */
  let runs = [];
  /** @type {Map<string, string>} run id -> last display status */
  const seen = new Map();
  /** @type {Map<string, number>} runs that finished while we watched -> when we saw it */
  const justFinished = new Map();
  const isFresh = (/** @type {any} */ run, /** @type {number} */ now) =>
    now - (justFinished.get(String(run.id)) ?? -Infinity) < FRESH_MS;

  function render() {
    const now = Date.now();
    const active = runs.filter((r) => isActive(r.status));
    const recent = runs
      .filter((r) => !isActive(r.status))
      .filter((r) => {
        const done = parseTime(r.completed_at);
        return !done || now - done.getTime() <= RECENT_MS;
      })
      .sort(
        (a, b) => (parseTime(b.completed_at)?.getTime() ?? 0) - (parseTime(a.completed_at)?.getTime() ?? 0),
      );
    activeCount.textContent = `(${active.length})`;
    recentCount.textContent = `(${recent.length})`;
    activeList.replaceChildren(...(active.length ? active.map(activeRow) : [emptyRow("No active runs")]));
    recentList.replaceChildren(
      ...(recent.length
        ? recent.map((r) => finishedRow(r, isFresh(r, now)))
        : [emptyRow("Nothing finished recently")]),
    );
  }

  const sub = client.subscribe(`operations:${workspaceId}`, {
    onState(data) {
      runs = Array.isArray(data?.runs) ? data.runs : [];
      const name = runs.find((r) => r.workspace_name)?.workspace_name;
      if (name && onName) onName(name);
      /** @type {string[]} */
      const finished = [];
      for (const run of runs) {
        const id = String(run.id);
        const status = runStatus(run.status);
        const before = seen.get(id);
        if (before && isActive(before) && !isActive(status)) {
          justFinished.set(id, Date.now());
          finished.push(`Run ${id} ${run.type ?? ""} ${RUN_STATUS[status].label.toLowerCase()}.`);
        }
        seen.set(id, status);
      }
      notice.replaceChildren();
      render();
      if (finished.length) live.textContent = finished.join(" ");
    },
    onError(code, message) {
      const text = ERROR_MESSAGES[/** @type {keyof typeof ERROR_MESSAGES} */ (code)] ?? message;
      notice.replaceChildren(h("p", { class: "notice", role: "alert", "data-error": code, text }));
      activeList.replaceChildren();
    },
    onEnd(reason) {
      if (reason === "revoked") {
        notice.replaceChildren(
          h("p", { class: "notice", role: "alert", text: "Access to this wall was revoked." }),
        );
      }
    },
  });
  // Drop runs that left the 15-minute window between two pushes (a local timer, no network).
  const timer = setInterval(render, 30000);
  return {
    destroy() {
      clearInterval(timer);
      sub.unsubscribe();
    },
  };
}

/** @param {string} text */
function emptyRow(text) {
  return h("li", { class: "wall-empty", text });
}

/** @param {any} run */
function statusBadge(run) {
  const status = runStatus(run.status);
  const el = badge(status, RUN_STATUS[status].label);
  el.dataset.status = status;
  return el;
}

/** @param {any} run */
function title(run) {
  return h(
    "div",
    { class: "wall-title" },
    h("span", { class: "wall-run-id", text: `#${run.id}` }),
    " ",
    h("span", { class: "wall-type", text: run.type ?? "" }),
    h("span", {
      class: "wall-tenant",
      text: run.tenant_id == null ? "Workspace" : (run.tenant_name ?? `Tenant ${run.tenant_id}`),
    }),
  );
}

/** @param {any} run */
function activeRow(run) {
  const counts = run.summary_counts ?? {};
  const queued = runStatus(run.status) === "queued";
  const since = run.started_at ? "started " : queued ? "queued " : "created ";
  return h(
    "li",
    { class: "wall-row", "data-run-id": run.id },
    statusBadge(run),
    title(run),
    h(
      "div",
      { class: "wall-progress" },
      progressBar(run.progress, `Run ${run.id} progress`, counts, queued ? "Waiting" : "In progress"),
    ),
    h("div", { class: "wall-when" }, since, timeEl(run.started_at ?? run.created_at)),
  );
}

/**
 * @param {any} run
 * @param {boolean} fresh finished while this wall was watching
 */
function finishedRow(run, fresh) {
  const counts = run.summary_counts ?? {};
  const failed =
    typeof counts.failed === "number" && counts.failed > 0 ? `${fmtNumber(counts.failed)} failed` : null;
  return h(
    "li",
    { class: `wall-row finished${fresh ? " fresh" : ""}`, "data-run-id": run.id },
    statusBadge(run),
    title(run),
    h(
      "div",
      { class: "wall-outcome" },
      typeof counts.total === "number"
        ? `${fmtNumber(counts.processed)} of ${fmtNumber(counts.total)} processed`
        : "",
      failed ? h("strong", { class: "wall-failed", text: ` · ${failed}` }) : null,
    ),
    h("div", { class: "wall-when" }, "finished ", timeEl(run.completed_at)),
  );
}
