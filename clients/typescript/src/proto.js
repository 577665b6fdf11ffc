// The protos this package ships (proto/): the daemon's own (a copy of the repository's proto/,
// kept equal by a test) and the google.rpc ones its error details are encoded with.
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

const PROTO_DIR = fileURLToPath(new URL('../proto/', import.meta.url));

let broker;
/** The generated-at-load-time Broker service client constructor. */
export function brokerService() {
  if (!broker) {
    const def = protoLoader.loadSync('credbroker/v1/broker.proto', {
      includeDirs: [PROTO_DIR],
      // Timestamps stay messages ({seconds, nanos}); int64 seconds as strings, never lossy.
      longs: String,
      defaults: true,
    });
    broker = grpc.loadPackageDefinition(def).credbroker.v1.Broker;
  }
  return broker;
}

let rpc;
function rpcTypes() {
  if (!rpc) {
    const root = new protobuf.Root();
    // Resolve imports inside the shipped proto dir; google/protobuf/* are protobufjs built-ins.
    root.resolvePath = (_origin, target) =>
      target.startsWith('google/protobuf/') ? target : PROTO_DIR + target;
    root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
    rpc = {
      Status: root.lookupType('google.rpc.Status'),
      ErrorInfo: root.lookupType('google.rpc.ErrorInfo'),
      RetryInfo: root.lookupType('google.rpc.RetryInfo'),
    };
  }
  return rpc;
}

const TYPE_PREFIX = 'type.googleapis.com/';

/**
 * The ErrorInfo (domain, reason, metadata) and RetryInfo (delay in ms) in an encoded
 * google.rpc.Status, or nulls when absent or undecodable (then it did not come from credbroker).
 * @param {Buffer | undefined} bytes
 */
export function decodeStatusDetails(bytes) {
  const out = { errorInfo: null, retryDelayMs: null };
  if (!bytes || bytes.length === 0) return out;
  const { Status, ErrorInfo, RetryInfo } = rpcTypes();
  let status;
  try {
    status = Status.decode(bytes);
  } catch {
    return out;
  }
  for (const any of status.details ?? []) {
    // protobufjs's built-in Any keeps the proto's own field name (type_url).
    const type = String(any.type_url ?? any.typeUrl ?? '').replace(TYPE_PREFIX, '');
    try {
      if (type === 'google.rpc.ErrorInfo') {
        const info = ErrorInfo.decode(any.value);
        out.errorInfo = { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } };
      } else if (type === 'google.rpc.RetryInfo') {
        const d = RetryInfo.decode(any.value).retryDelay;
        if (d) out.retryDelayMs = Number(d.seconds ?? 0) * 1000 + Math.round((d.nanos ?? 0) / 1e6);
      }
    } catch {
      // One undecodable detail does not hide the others.
    }
  }
  return out;
}
