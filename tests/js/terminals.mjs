// Opens a terminal in one workspace with JupyterLab's own TerminalManager, runs a command,
// reconnects (the scrollback must come back), and shuts it down; prints what it saw as JSON.
import { PageConfig } from '@jupyterlab/coreutils';
import { ServerConnection, TerminalManager } from '@jupyterlab/services';
import WebSocket from 'ws';

// What JupyterLab's page config says when the server has terminals.
PageConfig.setOption('terminalsAvailable', 'true');
const serverSettings = ServerConnection.makeSettings({
  baseUrl: process.env.BASE_URL,
  wsUrl: process.env.BASE_URL.replace(/^http/, 'ws'),
  token: process.env.TOKEN,
  appendToken: true,
  WebSocket,
});
const terminals = new TerminalManager({ serverSettings });
const seen = {};

async function waitFor(predicate, what, timeoutMs = 20000) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const terminal = await terminals.startNew();
seen.name = terminal.name;
let output = '';
terminal.messageReceived.connect((_, message) => {
  if (message.type === 'stdout') output += message.content[0];
});
await waitFor(() => terminal.connectionStatus === 'connected', 'the connection');
terminal.send({ type: 'stdin', content: ['echo $((6*7))\r'] });
await waitFor(() => output.includes('42'), 'the answer');
seen.answered = true;

output = '';
await terminal.reconnect();
await waitFor(() => output.includes('42'), 'the scrollback after reconnecting');
seen.scrollbackReplayed = true;

terminal.send({ type: 'stdin', content: ['echo after-$((20+3))\r'] });
await waitFor(() => output.includes('after-23'), 'input after reconnecting');
seen.inputAfterReconnect = true;

seen.listed = (await terminals.requestRunning(), Array.from(terminals.running()).map((m) => m.name));
await terminal.shutdown();
seen.afterShutdown = (await terminals.requestRunning(), Array.from(terminals.running()).map((m) => m.name));
terminals.dispose();
console.log(JSON.stringify(seen));
process.exit(0);
