// index.js: the links of the index page keep the token of this page's address, if any; the
// address bar and the history entry then drop it, as every other page does.
import { forgetPageToken } from "./opspush.js";

const hash = location.hash;
if (hash) {
  for (const link of document.querySelectorAll("a[data-page]")) {
    link.setAttribute("href", `${link.getAttribute("href")}${hash}`);
  }
  forgetPageToken();
}
