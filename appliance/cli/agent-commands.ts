import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

import type { Command } from 'commander';

import { HoldfastError } from '../errors/index.ts';
import type { GlobalOptions } from './context.ts';
import { untilAborted } from './context.ts';
import type { CommandContext } from './replication-commands.ts';
import { NODE_MAJOR } from './runtime.mjs';

interface AgentFlags {
  dataDir: string;
  installRoot: string;
  provisioning: string;
  engineSocket?: string;
  engineTokenFile?: string;
  once?: boolean;
}

/** `holdfast agent` (holdfast-agent) and `holdfast self-test` (the health check a new release passes before it is kept). */
export function registerAgentCommands(program: Command, ctx: CommandContext): void {
  program.command('agent')
    .description('run the fleet agent (holdfast-agent): enroll once, heartbeat, run the fleet\'s commands, install updates; until SIGTERM')
    .option('--data-dir <dir>', 'the agent\'s directory: identity, state, TUF metadata, downloads', '/var/lib/holdfast-agent')
    .option('--install-root <dir>', 'where releases are installed side by side (current -> releases/VERSION)', '/opt/holdfast')
    .option('--provisioning <file>', 'the provisioning file the image carries', '/etc/holdfast/provisioning.json')
    .option('--engine-socket <path>', 'the engine\'s API socket', '/run/holdfast/engine.sock')
    .option('--engine-token-file <file>', 'the engine\'s local token (DATA_DIR/local.token)', '/var/lib/holdfast/local.token')
    .option('--once', 'one heartbeat, then exit (first boot, scripts)')
    .action(ctx.action(async (_g: GlobalOptions, o: AgentFlags) => {
      const [{ default: pino }, { Agent, SystemdServices, readProvisioning }, { EngineClient }, { Notifier }] = await Promise.all([
        import('pino'), import('../agent/index.ts'), import('../console/engine-client.ts'), import('../engine/notifier.ts'),
      ]);
      const log = pino({ base: { service: 'holdfast-agent' } });
      const token = o.engineTokenFile ? (await fsp.readFile(o.engineTokenFile, 'utf8').catch(() => '')).trim() : '';
      const engine = o.engineSocket && token ? new EngineClient(o.engineSocket, `Local ${token}`) : null;
      const agent = await Agent.open({
        dataDir: path.resolve(o.dataDir), installRoot: path.resolve(o.installRoot), provisioning: await readProvisioning(o.provisioning),
        engine, services: new SystemdServices(), log,
        selfTestArgs: o.engineSocket ? ['--engine-socket', o.engineSocket] : [],
      });
      log.info({ box: agent.identity.name, fleet: agent.identity.fleet, version: await agent.version() }, 'agent ready');
      if (o.once) {
        await agent.heartbeat();
        await agent.close();
        return ctx.exit.ok;
      }
      const notifier = new Notifier(log);
      let lastBeat = Date.now();
      notifier.ready(async () => Date.now() - lastBeat < 3 * 3_600_000); // healthy while heartbeats go out
      const run = agent.run(ctx.signal, () => { lastBeat = Date.now(); });
      await untilAborted(ctx.signal);
      notifier.stopping();
      await run;
      await agent.close();
      return ctx.exit.ok;
    }));

  program.command('restore-box')
    .description('a replacement box: fetch the escrow of the box it replaces from the fleet, open it with the recovery key, clone the repository from an offsite store, and set up the engine as it was')
    .option('--agent-data-dir <dir>', 'the enrolled agent\'s directory (enrolled with a replacement token)', '/var/lib/holdfast-agent')
    .option('--data-dir <dir>', 'the engine\'s data directory to set up (new, or not configured)', '/var/lib/holdfast')
    .addHelpText('after', '\nThe recovery key printed at the old box\'s setup: --recovery-key-file FILE (or HOLDFAST_RECOVERY_KEY).')
    .action(ctx.action(async (g: GlobalOptions, o: { agentDataDir: string; dataDir: string }) => {
      const [{ RESTORED_MARKER, fetchEscrow, identityFiles }, { restoreFromEscrow }, { readSecretFile }, { openEscrow }] = await Promise.all([
        import('../agent/index.ts'), import('../engine/index.ts'), import('./context.ts'), import('../escrow/index.ts'),
      ]);
      const recoveryKey = g.recoveryKeyFile ? readSecretFile(g.recoveryKeyFile, 'recovery key') : process.env.HOLDFAST_RECOVERY_KEY;
      if (!recoveryKey) throw new HoldfastError('HF_NO_PASSWORD', 'no recovery key: pass --recovery-key-file FILE (or set HOLDFAST_RECOVERY_KEY): the one printed at the old box\'s setup');
      const escrow = await fetchEscrow(path.resolve(o.agentDataDir), (blob) => { openEscrow(blob, recoveryKey); return blob; });
      const id = identityFiles(path.resolve(o.agentDataDir));
      const r = await restoreFromEscrow({
        dataDir: path.resolve(o.dataDir), escrow, recoveryKey, identity: { cert: id.cert, key: id.key, ca: id.ca }, signal: ctx.signal,
        onProgress: (m) => ctx.out().note(m),
      });
      await fsp.writeFile(path.join(path.resolve(o.agentDataDir), RESTORED_MARKER), `${new Date().toISOString()}\n`, { mode: 0o600 });
      ctx.out().line(`restored: ${r.sources} sources, ${r.schedules} schedules, ${r.targets} targets, ${r.snapshots} snapshots (cloned from ${r.clonedFrom}); start holdfast-engine`);
      ctx.out().result(r);
      return ctx.exit.ok;
    }));

  program.command('box-banner')
    .description('print what the box\'s screen shows: the console\'s address and certificate fingerprint, the release and the fleet enrollment (run by holdfast-banner at boot)')
    .option('--console <host:port>', 'the console to ask for its certificate', '127.0.0.1:8443')
    .option('--agent-data-dir <dir>', 'the agent\'s directory (its identity)', '/var/lib/holdfast-agent')
    .option('--install-root <dir>', 'where releases are installed', '/opt/holdfast')
    .option('--issue <file>', 'also write the banner there (agetty shows /etc/issue.d/*.issue above the login prompt)')
    .action(ctx.action(async (_g: GlobalOptions, o: { console: string; agentDataDir: string; installRoot: string; issue?: string }) => {
      const { boxBanner } = await import('./box-banner.ts');
      const text = await boxBanner(o);
      if (o.issue) {
        await fsp.mkdir(path.dirname(o.issue), { recursive: true });
        await fsp.writeFile(`${o.issue}.tmp`, `${text.replace(/\\/g, '\\\\')}\n`);
        await fsp.rename(`${o.issue}.tmp`, o.issue);
      }
      ctx.out().line(text);
      return ctx.exit.ok;
    }));

  program.command('self-test')
    .description('check this release works on this box: runtime, native addon, and the engine answering (run by the agent after an update)')
    .option('--engine-socket <path>', 'also check the engine answers on its socket')
    .action(ctx.action(async (_g: GlobalOptions, o: { engineSocket?: string }) => {
      const checks: string[] = [];
      const major = Number(process.versions.node.split('.')[0]);
      if (major !== NODE_MAJOR) throw new HoldfastError('HF_UNSUPPORTED_VERSION', `the runtime is Node ${process.versions.node}, this release needs ${NODE_MAJOR}`);
      checks.push(`node ${process.versions.node}`);
      const native = await import('../../native/index.ts');
      const data = Buffer.from('holdfast self-test');
      const got = await native.sha256([data]);
      if (!got.equals(createHash('sha256').update(data).digest())) throw new HoldfastError('HF_NATIVE_UNAVAILABLE', 'the native addon computes a wrong SHA-256');
      checks.push('native addon');
      if (o.engineSocket) {
        const { EngineClient } = await import('../console/engine-client.ts');
        const c = new EngineClient(o.engineSocket);
        try {
          const s = await c.call<{ program: string }>('GET', '/v1/status');
          checks.push(`engine answers (${s.program})`);
        } finally {
          await c.dispatcher.close();
        }
      }
      ctx.out().line(`self-test ok: ${checks.join(', ')}`);
      ctx.out().result({ ok: true, checks });
      return ctx.exit.ok;
    }));
}
