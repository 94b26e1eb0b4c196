import { EventEmitter } from 'node:events';

import type { JobRecord } from './state-store.ts';

/** What the engine tells its listeners (the console relays these to browsers as server-sent events). */
export type EngineEvent =
  | { type: 'job'; job: JobRecord }
  | { type: 'status'; status: string };

/** A typed event bus; listeners that throw are not the emitter's problem. */
export class EngineEvents {
  readonly #em = new EventEmitter();

  constructor() {
    this.#em.setMaxListeners(0);
  }

  emit(e: EngineEvent): void {
    this.#em.emit('event', e);
  }

  on(fn: (e: EngineEvent) => void): () => void {
    const safe = (e: EngineEvent) => {
      try {
        fn(e);
      } catch {
        // a listener's failure must not stop a job
      }
    };
    this.#em.on('event', safe);
    return () => this.#em.off('event', safe);
  }
}
