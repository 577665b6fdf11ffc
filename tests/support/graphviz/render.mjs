// Renders Graphviz DOT from stdin to SVG on stdout with Graphviz itself (the C library,
// compiled to WebAssembly by @hpcc-js/wasm-graphviz): the same parser and layout as `dot -Tsvg`.
// A syntax error is an exception: message on stderr, exit 1.
import { Graphviz } from '@hpcc-js/wasm-graphviz';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const src = Buffer.concat(chunks).toString('utf8');
try {
  const graphviz = await Graphviz.load();
  process.stderr.write(`graphviz ${graphviz.version()}\n`);
  process.stdout.write(graphviz.dot(src, 'svg'));
} catch (err) {
  process.stderr.write(`graphviz: ${err?.message ?? err}\n`);
  process.exit(1);
}
