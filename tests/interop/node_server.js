// A Node.js tls server that requires a client certificate, configured from a JSON file:
// {"port", "key", "cert", "ca": [files], "crl": [files] | "file", "report": bool}. "crl" as
// an array is what docs/crl.md recommends (one PEM CRL per CA); a single file is read as
// one string, of which Node only uses the first CRL. With "report" the server does not
// reject in the handshake but after it, so it can log why (Node's verification is the
// same; rejectUnauthorized only decides who closes). Logs "accepted CN" / "refused CODE".
"use strict";
const fs = require("fs");
const tls = require("tls");

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const read = (f) => fs.readFileSync(f);
const options = {
  key: read(config.key),
  cert: read(config.cert),
  ca: config.ca.map(read),
  crl: Array.isArray(config.crl) ? config.crl.map(read) : read(config.crl),
  requestCert: true,
  rejectUnauthorized: !config.report,
  minVersion: "TLSv1.2",
};
const server = tls.createServer(options, (socket) => {
  if (!socket.authorized) {
    console.log(`refused ${socket.authorizationError}`);
    socket.destroy();
    return;
  }
  const peer = socket.getPeerCertificate();
  console.log(`accepted ${peer.subject.CN}`);
  socket.end(`hello ${peer.subject.CN}\n`);
});
server.on("tlsClientError", (err) => console.log(`refused ${err.code || err.message}`));
server.listen(config.port, "127.0.0.1", () => console.log(`listening on ${config.port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
