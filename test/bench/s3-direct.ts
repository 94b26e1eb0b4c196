// The baseline of `npm run bench -- s3-store` as a command of its own,
// started cold like `holdfast replicate` (so both walls include a process
// start, module loading and a first connection): uploads files straight to
// a bucket with @aws-sdk/client-s3, one PutObject per file, some at once.
// Usage: node s3-direct.ts SPEC.json (credentials: AWS_ACCESS_KEY_ID /
// AWS_SECRET_ACCESS_KEY). Prints one JSON line: {"files", "bytes", "loop_seconds"}.
import fs from 'node:fs';
import path from 'node:path';

import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

import { forEachLimit } from '../../appliance/limits/index.ts';

interface Spec {
  endpoint: string;
  bucket: string;
  /** Key prefix, e.g. "direct/". */
  prefix: string;
  /** Directory the file names are relative to. */
  root: string;
  files: string[];
  concurrency: number;
}

const spec = JSON.parse(fs.readFileSync(process.argv[2]!, 'utf8')) as Spec;
const client = new S3Client({
  endpoint: spec.endpoint, region: 'us-east-1', forcePathStyle: true,
  requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  requestHandler: new NodeHttpHandler({ httpAgent: { keepAlive: true, maxSockets: 64 } }),
});
let bytes = 0;
const t0 = performance.now();
await forEachLimit(spec.files, spec.concurrency, async (rel) => {
  const body = await fs.promises.readFile(path.join(spec.root, rel));
  await client.send(new PutObjectCommand({ Bucket: spec.bucket, Key: spec.prefix + rel, Body: body, ContentLength: body.length }));
  bytes += body.length;
});
const loopSeconds = (performance.now() - t0) / 1000;
client.destroy();
process.stdout.write(`${JSON.stringify({ files: spec.files.length, bytes, loop_seconds: Math.round(loopSeconds * 1000) / 1000 })}\n`);
