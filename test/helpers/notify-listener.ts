import { spawn } from 'node:child_process';

import type { Test } from 'tap';

/** A real datagram socket, read by python3: one JSON line per datagram with the sender's pid (SO_PASSCRED). */
export function notifyListener(t: Test, socketPath: string): { messages: () => { pid: number; text: string }[]; ready: Promise<void> } {
  const script = `
import socket, struct, sys, json, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    data, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    print(json.dumps({"pid": pid, "text": data.decode()}), flush=True)
`;
  const child = spawn('python3', ['-c', script, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const messages: { pid: number; text: string }[] = [];
  let buf = '';
  let bound: () => void = () => undefined;
  const ready = new Promise<void>((resolve, reject) => {
    bound = resolve;
    child.once('exit', (code) => reject(new Error(`the notify listener (python3) exited with ${code} before binding ${socketPath}`)));
  });
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    const lines = buf.split('\n');
    buf = lines.pop()!;
    for (const l of lines) {
      if (l === 'bound') bound();
      else if (l) messages.push(JSON.parse(l) as { pid: number; text: string });
    }
  });
  return { messages: () => messages, ready };
}

