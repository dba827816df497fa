// run.js: the standalone run viewer page, /runs/{id}.
import { startPage } from "./page.js";
import { mountRunViewer } from "./run-viewer.js";

startPage({
  prefix: "/runs/",
  noun: "run",
  mount: (root, client, id) => mountRunViewer(root, { client, runId: id, setTitle: true }),
});
