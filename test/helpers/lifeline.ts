import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/**
 * A watcher for what a test started, in case the test process dies without
 * running its teardown (SIGKILL, a crash): `/bin/sh -c SCRIPT NAME ARGS…`
 * blocks reading a FIFO in `dir` whose only writer is this process (the
 * kernel closes that end however the process dies), then SCRIPT cleans up.
 * SCRIPT starts with `read _ || :`. cut() ends the watcher without doing
 * anything (the caller cleans up itself).
 */
export function startLifeline(dir: string, name: string, script: string[], args: string[], env?: NodeJS.ProcessEnv): { cut(): void } {
  const fifo = path.join(dir, 'lifeline');
  execFileSync('mkfifo', ['-m', '0600', fifo]);
  // A reader must exist before the writer can open; the watcher gets a
  // blocking read end of its own (the first, non-blocking one is closed).
  const probe = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const writer = fs.openSync(fifo, fs.constants.O_WRONLY); // O_CLOEXEC: no other child inherits it
  const reader = fs.openSync(fifo, fs.constants.O_RDONLY);
  fs.closeSync(probe);
  const watcher = spawn('/bin/sh', ['-c', script.join('\n'), name, ...args], { ...(env ? { env } : {}), detached: true, stdio: [reader, 'ignore', 'ignore'] });
  fs.closeSync(reader);
  watcher.unref();
  let cut = false;
  return {
    cut() {
      if (cut) return;
      cut = true;
      watcher.kill('SIGKILL');
      fs.closeSync(writer);
    },
  };
}
