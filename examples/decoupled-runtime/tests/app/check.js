// Starts the app the way the runtime does (its CMD, start-app) on a loopback port of the test
// container, waits for the line saying it listens, asks it once, and compares the answer with
// the runtime's declared version (NODE_VERSION, set from the matrix axis).
const { spawn } = require("child_process");
const http = require("http");

const expected = `I am running nodejs version: v${process.env.NODE_VERSION}\n`;
const app = spawn("start-app", [], {
  env: { ...process.env, PORT: "0", HOST: "127.0.0.1" },
  stdio: ["ignore", "pipe", "inherit"],
});
let output = "";
let asked = false;

function finish(code, message) {
  app.kill();
  (code === 0 ? console.log : console.error)(message);
  process.exit(code);
}

app.stdout.on("data", (chunk) => {
  output += chunk;
  const listening = output.match(/listening on 127\.0\.0\.1:(\d+)/);
  if (!listening || asked) return;
  asked = true;
  http
    .get({ host: "127.0.0.1", port: Number(listening[1]) }, (response) => {
      let body = "";
      response.on("data", (part) => (body += part));
      response.on("end", () =>
        body === expected
          ? finish(0, body.trim())
          : finish(1, `expected ${JSON.stringify(expected)}, got ${JSON.stringify(body)}`),
      );
    })
    .on("error", (error) => finish(1, `no answer: ${error.message}`));
});
app.on("exit", (code) => {
  if (!asked) finish(1, `the app exited (${code}) before listening:\n${output}`);
});
