// Serves the demo page and the built client on 127.0.0.1:<port> (default
// 8090; 0 picks a free one), no dependencies: `node demo/serve.mjs [port]`
// after `npm run build`. Prints `demo on http://127.0.0.1:<port>/`.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const port = Number(process.argv[2] ?? 8090);
const types = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };

const server = createServer(async (req, res) => {
  const path = new URL(req.url ?? "/", "http://x").pathname;
  const file = path === "/" ? "demo/index.html" : normalize(path).replace(/^\/+/, "");
  if (!(file === "demo/index.html" || file.startsWith("dist/"))) {
    res.writeHead(404).end();
    return;
  }
  try {
    const body = await readFile(join(root, file));
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`demo on http://127.0.0.1:${server.address().port}/\n`);
});
