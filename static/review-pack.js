// review-pack.js: the standalone tenant page with its review pack card, /tenants/{id}/review-pack.
import { mountReviewPackCard } from "./pack-card.js";
import { startPage } from "./page.js";

startPage({
  prefix: "/tenants/",
  noun: "tenant",
  mount(root, client, id) {
    const heading = document.getElementById("tenant-title");
    /** @param {string} name */
    const name = (name) => {
      if (heading) heading.textContent = name;
      document.title = `${name} · Review pack · opspush`;
    };
    name(`Tenant ${id}`); // until the first state names it
    // A second handle on the card's channel: it shares the card's subscription.
    client.subscribe(`review-pack:${id}`, {
      onState: (data) => {
        if (typeof data?.tenant_name === "string" && data.tenant_name) name(data.tenant_name);
      },
    });
    mountReviewPackCard(root, { client, tenantId: id });
  },
});
