// A stock @grpc/grpc-js client: no channel options, the socket address as any user would write
// it. Begins a task with the token on stdin, then ends it; prints what it got as one JSON line.
// Usage: node client.mjs SOCKET PROTO_DIR GRANT
import { readFileSync } from "node:fs";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [socket, protoDir, grant] = process.argv.slice(2);
const token = readFileSync(0, "utf8").trim();
const def = protoLoader.loadSync("credbroker/v1/broker.proto", { includeDirs: [protoDir] });
const v1 = grpc.loadPackageDefinition(def).credbroker.v1;
const client = new v1.Broker(`unix:${socket}`, grpc.credentials.createInsecure());
const call = (method, req) =>
  new Promise((resolve, reject) =>
    client[method](req, (err, res) => (err ? reject(err) : resolve(res))),
  );
try {
  const begun = await call("BeginTask", { token, tool: "query", grants: [{ name: grant }] });
  const ended = await call("EndTask", { taskId: begun.task.id });
  console.log(JSON.stringify({
    task_id: begun.task.id,
    begun_state: begun.task.state,
    credentials: begun.credentials.length,
    ended_state: ended.task.state,
  }));
} catch (e) {
  console.log(JSON.stringify({ error: e.code, details: e.details }));
  process.exitCode = 1;
}
client.close();
