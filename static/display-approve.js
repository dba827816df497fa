// display-approve.js: opspush's own approval page for a wall display (docs/displays.md), for
// when the host has none: the code from the QR code's address, the approver's own token
// from `#token=` (never sent in a request line) or typed.
import { forgetPageToken, pageToken } from "./opspush.js";

const form = /** @type {HTMLFormElement} */ (document.getElementById("approve"));
const result = /** @type {HTMLElement} */ (document.getElementById("result"));
const field = (/** @type {string} */ name) => /** @type {HTMLInputElement} */ (form.elements.namedItem(name));

field("code").value = new URLSearchParams(location.search).get("code") ?? "";
field("token").value = pageToken() ?? "";
forgetPageToken();

const MESSAGES = {
  unauthorized: "Your token was not accepted.",
  forbidden: "You may not watch this workspace's wall.",
  not_found: "No such workspace, or you are not a member of it.",
  invalid_code: "No display is waiting with this code: check it, or wait for a new one.",
  rate_limited: "Too many wrong codes: try again in a few minutes.",
  bad_request: "Fill in every field (a name of 1 to 100 characters).",
};

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  result.textContent = "Approving…";
  const workspace = Number(field("workspace_id").value);
  let response;
  try {
    response = await fetch("/api/displays/approve", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${field("token").value.trim()}` },
      body: JSON.stringify({ code: field("code").value, workspace_id: workspace, name: field("name").value }),
    });
  } catch {
    result.textContent = "Cannot reach the server.";
    return;
  }
  const data = await response.json().catch(() => ({}));
  if (response.ok) {
    result.dataset.approved = String(data.display.id);
    result.textContent = `Approved: display ${data.display.id} (${data.display.name}) now shows the wall.`;
  } else {
    result.textContent = MESSAGES[/** @type {keyof typeof MESSAGES} */ (data.error)] ?? "Refused.";
  }
});
