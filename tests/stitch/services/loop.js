// An event-loop HTTP service (Node.js): every request calls the backend with its nonce.
// Many requests are in flight on the one thread at once.  No tracing code.
const http = require("http");
const [port, backend] = [Number(process.argv[2]), process.argv[3]];
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
http.createServer((req, res) => {
  const nonce = req.url.slice(1);
  http.get(`${backend}/down/${nonce}`, { agent }, (r) => {
    r.resume();
    r.on("end", () => res.end(`ok ${nonce}`));
  });
}).listen(port, "127.0.0.1", () => console.log("ready"));
