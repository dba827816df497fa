// review-pack.js: the standalone tenant page with its review pack card, /tenants/{id}/review-pack.
import { mountReviewPackCard } from "./pack-card.js";
import { startPage } from "./page.js";

startPage({
  prefix: "/tenants/",
  noun: "tenant",
  mount(root, client, id) {
    const heading = document.getElementById("tenant-title");
    if (heading) heading.textContent = `Tenant ${id}`;
    document.title = `Tenant ${id} · Review pack · opspush`;
    mountReviewPackCard(root, { client, tenantId: id });
  },
});
