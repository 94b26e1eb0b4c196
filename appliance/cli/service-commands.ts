import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { Command } from 'commander';

import { HoldfastError } from '../errors/index.ts';
import type { GlobalOptions } from './context.ts';
import { passphrase, readSecretFile, untilAborted } from './context.ts';
import { V8_FLAGS } from './runtime.mjs';
import type { CommandContext } from './replication-commands.ts';

/** The appliance's data directory: --data-dir, else HOLDFAST_DATA_DIR, else $XDG_DATA_HOME/holdfast (~/.local/share/holdfast). */
export function dataDir(o: { dataDir?: string }): string {
  if (o.dataDir) return path.resolve(o.dataDir);
  if (process.env.HOLDFAST_DATA_DIR) return path.resolve(process.env.HOLDFAST_DATA_DIR);
  return path.join(process.env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share'), 'holdfast');
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** HOST:PORT, [IPv6]:PORT or PORT for --listen; HOLDFAST_CONSOLE_PORT gives the default port. */
export function listenAddress(value: string | undefined): { host: string; port: number } {
  const defaultPort = Number(process.env.HOLDFAST_CONSOLE_PORT ?? 8443);
  const v = value ?? process.env.HOLDFAST_CONSOLE_LISTEN ?? `127.0.0.1:${defaultPort}`;
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d{1,5})$/.exec(v) ?? (/^\d{1,5}$/.test(v) ? [v, undefined, '127.0.0.1', v] : null);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new HoldfastError('HF_USAGE', `--listen ${JSON.stringify(v)}: give HOST:PORT (e.g. 0.0.0.0:8443)`);
  return { host: m[1] ?? m[2]!, port };
}

/** The engine's API as the box itself (DATA_DIR/local.token, root only). */
export async function withLocalEngine<T>(o: { dataDir?: string }, fn: (c: import('../console/index.ts').EngineClient) => Promise<T>): Promise<T> {
  const dir = dataDir(o);
  const fs = await import('node:fs/promises');
  let token: string;
  try {
    token = (await fs.readFile(path.join(dir, 'local.token'), 'utf8')).trim();
  } catch (err) {
    throw new HoldfastError('HF_ENGINE_UNAVAILABLE', `cannot read ${path.join(dir, 'local.token')} (${(err as Error).message}): run as root on the appliance, with --data-dir if it is elsewhere`);
  }
  const { EngineClient } = await import('../console/index.ts');
  const c = new EngineClient(path.join(dir, 'engine.sock'), `Local ${token}`);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/** `holdfast engine` (holdfast-engine): the appliance's engine service. */
export function registerServiceCommands(program: Command, ctx: CommandContext): void {
  program.command('engine')
    .description('run the appliance engine (holdfast-engine): jobs, schedules and the appliance API on a unix socket; until SIGTERM')
    .option('--data-dir <dir>', 'data directory (or HOLDFAST_DATA_DIR; default ~/.local/share/holdfast)')
    .option('--socket <path>', 'the API socket (default DATA_DIR/engine.sock)')
    .option('--restore-root <dir>', 'a directory restores may write into, besides DATA_DIR/restores (repeatable)', collect)
    .addHelpText('after', '\nOn first start only, --repo DIR with --password-file F (or HOLDFAST_PASSWORD) adopts an existing repository;\notherwise the engine creates one in DATA_DIR/repository with a random passphrase it keeps sealed.')
    .action(ctx.action(async (g: GlobalOptions, o: { dataDir?: string; socket?: string; restoreRoot?: string[] }) => {
      const { Engine } = await import('../engine/index.ts');
      const password = g.repo ? passphrase(g) : null;
      const engine = await Engine.open({
        dataDir: dataDir(o),
        ...(o.socket ? { socketPath: path.resolve(o.socket) } : {}),
        ...(g.repo && password ? { repo: { dir: g.repo, password } } : {}),
        ...(o.restoreRoot ? { restoreRoots: o.restoreRoot } : {}),
        ...(process.env.HOLDFAST_RESTORE_ROOTS ? { restoreRoots: [...(o.restoreRoot ?? []), ...process.env.HOLDFAST_RESTORE_ROOTS.split(':').filter(Boolean)] } : {}),
      });
      await engine.start();
      await untilAborted(ctx.signal);
      await engine.stop();
      return ctx.exit.ok;
    }));
}

/** `holdfast console` and `holdfast start` (registered with the engine command). */
export function registerConsoleCommands(program: Command, ctx: CommandContext): void {
  program.command('console')
    .description('run the web console (holdfast-console): HTTPS, talks to the engine\'s socket; until SIGTERM')
    .option('--data-dir <dir>', 'data directory: the engine socket and the console certificate (or HOLDFAST_DATA_DIR)')
    .option('--state-dir <dir>', 'where the console keeps its TLS certificate (default DATA_DIR/console)')
    .option('--engine-socket <path>', 'the engine\'s API socket (default DATA_DIR/engine.sock)')
    .option('--listen <host:port>', 'where to serve HTTPS (or HOLDFAST_CONSOLE_LISTEN; default 127.0.0.1:HOLDFAST_CONSOLE_PORT or 8443)')
    .action(ctx.action(async (_g: GlobalOptions, o: { dataDir?: string; stateDir?: string; engineSocket?: string; listen?: string }) => {
      const { startConsole } = await import('../console/index.ts');
      const pino = (await import('pino')).default;
      const dir = dataDir(o);
      const { host, port } = listenAddress(o.listen);
      const log = pino({ base: { service: 'holdfast-console' } });
      const c = await startConsole({
        stateDir: o.stateDir ? path.resolve(o.stateDir) : path.join(dir, 'console'),
        engineSocket: o.engineSocket ? path.resolve(o.engineSocket) : path.join(dir, 'engine.sock'),
        host, port, log,
      });
      log.info({ url: c.url, certificate: c.fingerprint }, 'console ready');
      const { sdNotify } = await import('../../native/index.ts');
      sdNotify(`READY=1\nSTATUS=serving ${c.url}\nMAINPID=${process.pid}`);
      await untilAborted(ctx.signal);
      await c.close();
      return ctx.exit.ok;
    }));

  program.command('start')
    .description('run the appliance on this machine: the engine and the console (at https://localhost:8443) as two processes; until Ctrl-C')
    .option('--data-dir <dir>', 'data directory (or HOLDFAST_DATA_DIR; default ~/.local/share/holdfast)')
    .option('--listen <host:port>', 'the console\'s address (or HOLDFAST_CONSOLE_LISTEN / HOLDFAST_CONSOLE_PORT)')
    .action(ctx.action(async (_g: GlobalOptions, o: { dataDir?: string; listen?: string }) => {
      const dir = dataDir(o);
      const { host, port } = listenAddress(o.listen);
      const bin = fileURLToPath(new URL('./holdfast.mjs', import.meta.url));
      const env = { ...process.env, HOLDFAST_DATA_DIR: dir };
      const run = (args: string[]) => spawn(process.execPath, [...V8_FLAGS, bin, ...args], { stdio: ['ignore', 'inherit', 'inherit'], env });
      const exits = new Map<ReturnType<typeof spawn>, Promise<number>>();
      const exitOf = (p: ReturnType<typeof spawn>) => exits.get(p)!;
      const start = (args: string[]) => {
        const p = run(args);
        exits.set(p, new Promise<number>((resolve) => p.once('exit', (code) => resolve(code ?? 1))));
        return p;
      };
      const engine = start(['engine', '--data-dir', dir]);
      const engineExit = exitOf(engine);
      const { EngineClient } = await import('../console/index.ts');
      const client = new EngineClient(path.join(dir, 'engine.sock'));
      for (let i = 0; ; i++) {
        if (engine.exitCode !== null) throw new HoldfastError('HF_ENGINE_UNAVAILABLE', `the engine exited (${engine.exitCode}); see its log above`);
        if (await client.call('GET', '/v1/status').then(() => true, () => false)) break;
        if (i > 600) throw new HoldfastError('HF_ENGINE_UNAVAILABLE', 'the engine did not start within a minute');
        await new Promise((r) => setTimeout(r, 100));
      }
      await client.close();
      const consoleProc = start(['console', '--data-dir', dir, '--listen', `${host.includes(':') ? `[${host}]` : host}:${port}`]);
      const shown = host === '127.0.0.1' || host === '0.0.0.0' || host === '::' ? 'localhost' : host;
      ctx.out().line(`Holdfast is running: open https://${shown}:${port} (the first visit sets the admin password). Data: ${dir}. Ctrl-C stops it.`);
      const stop = () => { engine.kill('SIGTERM'); consoleProc.kill('SIGTERM'); };
      ctx.signal.addEventListener('abort', stop, { once: true });
      const first = await Promise.race([engineExit, exitOf(consoleProc)]);
      stop();
      await Promise.all([engineExit, exitOf(consoleProc)]);
      return ctx.signal.aborted ? ctx.exit.ok : first;
    }));

  // ---- console users, from the box itself (the way back in when no admin can log in) ----
  const user = program.command('user').description('console users, through the engine\'s socket with DATA_DIR/local.token (root on the box)');
  const local = withLocalEngine;
  user.command('list')
    .description('list the console\'s users and roles')
    .option('--data-dir <dir>', 'data directory (or HOLDFAST_DATA_DIR)')
    .action(ctx.action(async (_g: GlobalOptions, o: { dataDir?: string }) => {
      const r = await local(o, (c) => c.call<{ users: { name: string; role: string; lockedUntil: string | null }[] }>('GET', '/v1/users'));
      for (const u of r.users) ctx.out().line(`${u.name}\t${u.role}`);
      ctx.out().result({ users: r.users });
      return ctx.exit.ok;
    }));
  user.command('passwd')
    .description('set a console user\'s password (from HOLDFAST_NEW_PASSWORD or --new-password-file); also ends a lockout and the user\'s sessions')
    .argument('<name>', 'the user')
    .option('--new-password-file <file>', 'the new password')
    .option('--data-dir <dir>', 'data directory (or HOLDFAST_DATA_DIR)')
    .action(ctx.action(async (_g: GlobalOptions, name: string, o: { dataDir?: string; newPasswordFile?: string }) => {
      const next = o.newPasswordFile ? readSecretFile(o.newPasswordFile, 'new password') : process.env.HOLDFAST_NEW_PASSWORD;
      if (!next) throw new HoldfastError('HF_NO_PASSWORD', 'no new password: set HOLDFAST_NEW_PASSWORD or pass --new-password-file');
      await local(o, (c) => c.call('PUT', `/v1/users/${encodeURIComponent(name)}`, { password: next }));
      ctx.out().line(`password of ${name} set; its sessions ended, and a lockout with them`);
      ctx.out().result({ user: name, changed: true });
      return ctx.exit.ok;
    }));
}
