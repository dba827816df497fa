// pack-card.js: the tenant review pack card, embeddable in any page with an OpsPush client.

import { PACK_STATUS, badge, fmtBytes, h, progressBar, timeEl } from "./ui.js";

/** @typedef {import("./opspush.js").OpsPush} OpsPush */

const ERROR_MESSAGES = {
  not_found: "This tenant does not exist, or you do not have access to it.",
  forbidden: "You do not have permission to view review packs of this tenant.",
};

const END_MESSAGES = {
  revoked: "Your access to this tenant's review packs was revoked.",
  gone: "This review pack was deleted.",
};

/**
 * Mount the live review pack card of a tenant into `root` (subscribes to
 * `review-pack:<tenantId>`). The card root carries `data-pack-status`: the stored status of
 * the latest pack, or `none`.
 * @param {HTMLElement} root
 * @param {{client: OpsPush, tenantId: string | number}} options
 * @returns {{destroy: () => void}}
 */
export function mountReviewPackCard(root, { client, tenantId }) {
  const heading = h("h2", { id: `pack-card-h-${tenantId}`, text: "Review pack" });
  const body = h("div", { class: "card-body" }, h("p", { class: "muted", text: "Loading…" }));
  const live = h("p", { class: "sr-only", role: "status", "aria-live": "polite" });
  const card = h("section", { class: "card pack-card", "aria-labelledby": heading.id }, heading, body, live);
  root.replaceChildren(card);
  /** @type {string | null} */
  let previous = null;

  const sub = client.subscribe(`review-pack:${tenantId}`, {
    onState(data) {
      const pack = data?.pack ?? null;
      /** @type {keyof typeof PACK_STATUS} */
      const status = !pack ? "none" : Object.hasOwn(PACK_STATUS, pack.status) ? pack.status : "failed";
      card.dataset.packStatus = pack ? String(pack.status) : "none";
      body.replaceChildren(...renderPack(pack, status));
      const wasActive = previous === "queued" || previous === "generating";
      if (wasActive && status !== "queued" && status !== "generating") {
        live.textContent = `Review pack ${PACK_STATUS[status].label.toLowerCase()}.`;
      }
      previous = status;
    },
    onEnd(reason) {
      const message = END_MESSAGES[/** @type {keyof typeof END_MESSAGES} */ (reason)];
      if (message) body.prepend(h("p", { class: "notice", role: "alert", text: message }));
    },
    onError(code, message) {
      const text = ERROR_MESSAGES[/** @type {keyof typeof ERROR_MESSAGES} */ (code)] ?? message;
      body.replaceChildren(h("p", { class: "notice", role: "alert", "data-error": code, text }));
    },
  });
  return { destroy: () => sub.unsubscribe() };
}

/**
 * @param {any} pack
 * @param {keyof typeof PACK_STATUS} status
 * @returns {HTMLElement[]}
 */
function renderPack(pack, status) {
  const info = PACK_STATUS[status];
  const statusBadge = badge(info.tone, info.label);
  if (!pack) {
    return [
      statusBadge,
      h("p", { class: "muted", text: "No review pack has been generated for this tenant." }),
    ];
  }
  /** @type {HTMLElement[]} */
  const out = [statusBadge];
  if (status === "queued" || status === "generating") {
    // Queued and generating are one state to the reader: the report is on its way.
    out.push(progressBar(null, "Review pack generation", {}, "Generating the report…"));
  }
  if (status === "failed") {
    out.push(h("p", { text: "Generating the review pack failed. Start a new one to try again." }));
  }
  if (status === "expired") {
    out.push(h("p", { text: "This pack passed its retention deadline and was removed." }));
  }
  out.push(renderFacts(pack, status));
  const summary = renderSummary(pack.summary);
  if (summary) out.push(summary);
  return out;
}

/**
 * @param {any} pack
 * @param {string} status
 */
function renderFacts(pack, status) {
  /** @type {[string, Node | string][]} */
  const rows = [["Requested", timeEl(pack.created_at)]];
  if (status === "ready" || status === "expired") {
    rows.push(["Generated", timeEl(pack.generated_at)]);
    const expires = timeEl(pack.expires_at, "—", { past: false });
    rows.push([status === "expired" ? "Expired" : "Expires", expires]);
    rows.push(["Size", fmtBytes(pack.file_size)]);
  }
  if (status === "ready" && pack.sha256) {
    rows.push(["SHA-256", h("code", { class: "hash", title: pack.sha256, text: pack.sha256 })]);
  }
  return h("dl", { class: "facts" }, ...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
}

/**
 * Scalar entries of the pack summary (its shape is free-form jsonb).
 * @param {any} summary
 */
function renderSummary(summary) {
  if (!summary || typeof summary !== "object" || Array.isArray(summary)) return null;
  const entries = Object.entries(summary)
    .filter(([, v]) => v === null || ["string", "number", "boolean"].includes(typeof v))
    .slice(0, 12);
  if (entries.length === 0) return null;
  return h(
    "details",
    { class: "pack-summary", open: true },
    h("summary", { text: "Summary" }),
    h(
      "dl",
      { class: "facts" },
      ...entries.flatMap(([k, v]) => [
        h("dt", { text: k.replaceAll("_", " ") }),
        h("dd", { text: v === null ? "—" : String(v) }),
      ]),
    ),
  );
}
