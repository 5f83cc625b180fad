// Opens a notebook's session in one workspace with JupyterLab's own SessionManager, runs code
// through the kernel connection (JupyterLab negotiates the v1 binary WebSocket protocol),
// interrupts, restarts and shuts down; prints what it saw as JSON.
import { PageConfig } from '@jupyterlab/coreutils';
import {
  KernelManager,
  KernelSpecManager,
  ServerConnection,
  SessionManager,
} from '@jupyterlab/services';
import WebSocket from 'ws';

PageConfig.setOption('terminalsAvailable', 'false');
const serverSettings = ServerConnection.makeSettings({
  baseUrl: process.env.BASE_URL,
  wsUrl: process.env.BASE_URL.replace(/^http/, 'ws'),
  token: process.env.TOKEN,
  appendToken: true,
  WebSocket,
});
const seen = {};

async function waitFor(predicate, what, timeoutMs = 60000) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

// Runs code; returns the reply status, stdout, results and error names it produced.
async function run(kernel, code) {
  const out = { stdout: '', results: [], errors: [] };
  const future = kernel.requestExecute({ code, stop_on_error: false });
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream' && msg.content.name === 'stdout') out.stdout += msg.content.text;
    if (msg.header.msg_type === 'execute_result') out.results.push(msg.content.data['text/plain']);
    if (msg.header.msg_type === 'error') out.errors.push(msg.content.ename);
  };
  const reply = await future.done;
  out.status = reply.content.status;
  return out;
}

const specs = new KernelSpecManager({ serverSettings });
await specs.ready;
seen.defaultSpec = specs.specs.default;
seen.specNames = Object.keys(specs.specs.kernelspecs);

const kernels = new KernelManager({ serverSettings });
const sessions = new SessionManager({ kernelManager: kernels, serverSettings });
await sessions.ready;

const session = await sessions.startNew({
  path: 'nb/analysis.ipynb',
  type: 'notebook',
  name: 'analysis.ipynb',
  kernel: { name: 'python3' },
});
const kernel = session.kernel;
seen.sessionPath = session.path;
seen.kernelName = kernel.name;
await waitFor(() => kernel.connectionStatus === 'connected', 'the kernel connection');
const info = await kernel.info;
seen.language = info.language_info.name;
seen.protocol = kernel._ws.protocol;

seen.printed = (await run(kernel, 'print(6*7)')).stdout;
seen.numpy = (await run(kernel, 'import numpy; numpy.arange(3).sum()')).results;
seen.cwd = (await run(kernel, 'import os; print(os.getcwd())')).stdout.trim();
seen.wrote = (await run(kernel, "open('from_kernel.txt', 'w').write('written by the kernel')")).results;

// The same path again: the existing session, the same kernel (as jupyter_server does).
const again = await sessions.startNew({ path: 'nb/analysis.ipynb', type: 'notebook', name: 'analysis.ipynb' });
seen.reusedSession = again.id === session.id;
seen.reusedKernel = again.kernel.id === kernel.id;
again.dispose();

// Interrupt a busy kernel, once its loop runs (a SIGINT that lands while ipykernel is still
// setting the execution up is not a KeyboardInterrupt in the user's code).
await run(kernel, 'x = 1');
let looping = false;
const loop = kernel.requestExecute({ code: "print('looping', flush=True)\nwhile True: pass", stop_on_error: false });
loop.onIOPub = (msg) => {
  if (msg.header.msg_type === 'stream' && msg.content.text.includes('looping')) looping = true;
};
await waitFor(() => looping, 'the loop to run');
await kernel.interrupt();
const interrupted = await loop.done;
seen.interrupted = interrupted.content.ename;
seen.afterInterrupt = (await run(kernel, 'x')).results;

// Restart: the state is gone, the connection comes back.
await kernel.restart();
await waitFor(() => kernel.connectionStatus === 'connected' && kernel.status === 'idle', 'idle after restart');
seen.afterRestart = (await run(kernel, 'x')).errors;
seen.stillWorks = (await run(kernel, 'print("after restart")')).stdout;

await sessions.refreshRunning();
seen.sessions = Array.from(sessions.running()).map((m) => m.path);
await kernels.refreshRunning();
seen.kernels = Array.from(kernels.running()).map((m) => m.id === kernel.id);

await session.shutdown();
await sessions.refreshRunning();
seen.sessionsAfterShutdown = Array.from(sessions.running()).length;
await kernels.refreshRunning();
seen.kernelsAfterShutdown = Array.from(kernels.running()).length;
sessions.dispose();
kernels.dispose();
console.log(JSON.stringify(seen));
process.exit(0);
