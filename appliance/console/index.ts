export { SESSION_COOKIE, type ConsoleOptions, startConsole } from './console-server.ts';
export { EngineClient } from './engine-client.ts';
