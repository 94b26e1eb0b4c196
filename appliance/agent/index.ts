export { Agent, type AgentOptions, type UpdateOutcome, compareVersions, inMaintenanceWindow } from './agent.ts';
export { type AgentState, loadState, saveState } from './agent-state.ts';
export { type BoxIdentity, RESTORED_MARKER, enrollBox, fetchEscrow, identityFiles, loadIdentity } from './box-identity.ts';
export { FleetClient } from './fleet-client.ts';
export { type Provisioning, readProvisioning } from './provisioning-file.ts';
export { ReleaseFetcher } from './release-fetcher.ts';
export { type InstalledRelease, currentRelease, installRelease, pruneReleases, switchRelease } from './release-installer.ts';
export { APPLIANCE_UNITS, type ServiceManager, SystemdServices, runSelfTest } from './service-manager.ts';
