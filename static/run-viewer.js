// run-viewer.js: the operation run viewer, embeddable in any page that has an OpsPush client.

import { RUN_STATUS, announce, badge, fmtNumber, h, isActive, progressBar, runStatus, timeEl } from "./ui.js";

/** @typedef {import("./opspush.js").OpsPush} OpsPush */

const COUNTERS = /** @type {const} */ ([
  ["total", "Total"],
  ["processed", "Processed"],
  ["succeeded", "Succeeded"],
  ["failed", "Failed"],
  ["skipped", "Skipped"],
]);

const END_MESSAGES = {
  revoked: "Your access to this run was revoked.",
  gone: "This run was deleted.",
};

const ERROR_MESSAGES = {
  not_found: "This run does not exist, or you do not have access to it.",
  forbidden: "You do not have permission to view this run.",
};

/**
 * Mount a live run viewer into `root` and subscribe to `run:<runId>`.
 * @param {HTMLElement} root
 * @param {{client: OpsPush, runId: string | number, setTitle?: boolean}} options
 * @returns {{destroy: () => void}}
 */
export function mountRunViewer(root, { client, runId, setTitle = false }) {
  const body = h("div", { class: "run-body" }, h("p", { class: "muted", text: "Loading run…" }));
  const live = h("p", { class: "sr-only", role: "status", "aria-live": "polite" });
  root.classList.add("run-viewer");
  root.replaceChildren(body, live);
  /** @type {string | null} */
  let previous = null;

  const sub = client.subscribe(`run:${runId}`, {
    onState(run) {
      const status = runStatus(run.status);
      body.replaceChildren(...renderRun(run));
      if (setTitle) document.title = `${RUN_STATUS[status].label} · Run ${run.id} · opspush`;
      if (previous !== null && isActive(previous) && !isActive(status)) {
        announce(live, `Run ${run.id} finished: ${RUN_STATUS[status].label}.`);
      }
      previous = status;
    },
    onEnd(reason) {
      const message = END_MESSAGES[/** @type {keyof typeof END_MESSAGES} */ (reason)];
      if (message) {
        body.prepend(h("p", { class: "notice", role: "alert", text: message }));
      }
    },
    onError(code, message) {
      const text = ERROR_MESSAGES[/** @type {keyof typeof ERROR_MESSAGES} */ (code)] ?? message;
      body.replaceChildren(h("p", { class: "notice", role: "alert", "data-error": code, text }));
    },
  });
  return { destroy: () => sub.unsubscribe() };
}

/**
 * @param {any} run the `data` of a run state frame
 * @returns {HTMLElement[]}
 */
function renderRun(run) {
  const status = runStatus(run.status);
  const counts = run.summary_counts ?? {};
  const statusBadge = badge(status, RUN_STATUS[status].label);
  statusBadge.dataset.status = status;

  const header = h(
    "header",
    { class: "run-header" },
    h(
      "h1",
      {},
      h("span", { text: `Run #${run.id}` }),
      " ",
      h("span", { class: "run-type", text: run.type ?? "" }),
    ),
    statusBadge,
  );

  const progress = isActive(status)
    ? h(
        "section",
        { class: "run-progress", "aria-label": "Progress" },
        progressBar(
          run.progress,
          `Run ${run.id} progress`,
          counts,
          status === "queued" ? "Waiting to start" : "In progress",
        ),
      )
    : null;

  const facts = h(
    "dl",
    { class: "facts" },
    ...fact("Type", h("code", { text: run.type ?? "—" })),
    ...fact(
      "Tenant",
      run.tenant_id == null
        ? h("span", { class: "muted", text: "Workspace only" })
        : (run.tenant_name ?? `Tenant ${run.tenant_id}`),
    ),
    ...fact("Workspace", run.workspace_name ?? `Workspace ${run.workspace_id}`),
    ...fact("Outcome", h("code", { text: run.outcome ?? "—" })),
    ...fact("Created", timeEl(run.created_at)),
    ...fact("Started", timeEl(run.started_at, "not yet")),
    ...fact("Completed", timeEl(run.completed_at, "not yet")),
  );

  const counters = h(
    "section",
    { class: "counters", "aria-labelledby": "run-counters-h" },
    h("h2", { id: "run-counters-h", text: "Counters" }),
    h(
      "dl",
      { class: "counter-grid" },
      ...COUNTERS.map(([key, label]) =>
        h(
          "div",
          { class: `counter counter-${key}` },
          h("dt", { text: label }),
          h("dd", { text: fmtNumber(counts[key]) }),
        ),
      ),
    ),
  );

  return [
    header,
    ...(progress ? [progress] : []),
    facts,
    counters,
    renderFailures(run.failure_summary, counts.failed ?? 0),
  ];
}

/**
 * @param {string} label
 * @param {Node | string} value
 */
function fact(label, value) {
  return [h("dt", { text: label }), h("dd", {}, value)];
}

/**
 * The reasons the run reported for its failures (`failure_summary`: one entry per reason,
 * with how many items it hit), not the failed items: those are the "Failed" counter.
 * @param {any} failures
 * @param {number} failed the number of items that failed
 */
function renderFailures(failures, failed) {
  const list = Array.isArray(failures) ? failures : [];
  const none =
    failed > 0
      ? `${fmtNumber(failed)} ${failed === 1 ? "item" : "items"} failed; the run reported no reasons.`
      : "No failures reported.";
  return h(
    "section",
    { class: "failures", "aria-labelledby": "run-failures-h" },
    h("h2", { id: "run-failures-h", text: `Failure reasons (${list.length})` }),
    list.length === 0
      ? h("p", { class: "muted", text: none })
      : h(
          "ul",
          { class: "failure-list" },
          ...list.map((f) =>
            h(
              "li",
              {},
              h("code", { class: "failure-code", text: f?.code ?? "error" }),
              h("span", { class: "failure-message", text: f?.message ?? "" }),
              typeof f?.count === "number"
                ? h("span", { class: "failure-count", text: `×${fmtNumber(f.count)}` })
                : null,
            ),
          ),
        ),
  );
}
