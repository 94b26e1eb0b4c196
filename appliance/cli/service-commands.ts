import os from 'node:os';
import path from 'node:path';

import type { Command } from 'commander';

import type { GlobalOptions } from './context.ts';
import { passphrase } from './context.ts';
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

/** `holdfast engine` (holdfast-engine) and `holdfast console` (holdfast-console): the appliance's services. */
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
      await new Promise<void>((resolve) => {
        if (ctx.signal.aborted) resolve();
        ctx.signal.addEventListener('abort', () => resolve(), { once: true });
      });
      await engine.stop();
      return ctx.exit.ok;
    }));
}
