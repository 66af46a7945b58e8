// The article's sample app: it answers with the version of the Node.js that runs it.
const http = require("http");

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "0.0.0.0";
const server = http.createServer((request, response) => {
  response.end(`I am running nodejs version: ${process.version}\n`);
});
server.listen(port, host, () => {
  console.log(`Example app listening on ${host}:${server.address().port}`);
});
