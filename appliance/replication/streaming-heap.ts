import v8 from 'node:v8';

/**
 * For a process that moves gigabytes through short-lived socket buffers
 * (a replication, a store front-end): V8 then counts that external memory
 * in its global heap limit, instead of starting a full collection every few
 * dozen MB of it (receiving 1 GiB over TLS: 1.8 s -> 1.1-1.4 s of CPU; the
 * S3 front-end about 30% less, docs/BENCHMARKS.md "s3-store"). Set at run
 * time in those processes only: as a global flag it raised a backup's peak
 * RSS (tree benchmark, 1.09x restic's instead of 0.96x).
 */
export function useStreamingHeap(): void {
  v8.setFlagsFromString('--external-memory-accounted-in-global-limit');
}
