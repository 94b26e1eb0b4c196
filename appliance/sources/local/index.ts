export { LocalSource, READ_PIECE } from './local-source.ts';
