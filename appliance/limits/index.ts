export { Semaphore } from './semaphore.ts';
export { forEachLimit } from './for-each-limit.ts';
