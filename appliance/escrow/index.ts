export {
  ESCROW_CONFIG_VERSION, type EscrowConfig, type EscrowSchedule, type EscrowSource, type EscrowTarget, type EscrowUser,
  canonicalJson, escrowDigest, escrowMac, hasValidEscrowMac, maskEscrowConfig, parseEscrowConfig,
} from './escrow-config.ts';
export { EscrowKeyPair, escrowKeyId } from './escrow-key-pair.ts';
export { openEscrow, readEscrowHeader } from './open-escrow.ts';
export { ESCROW_MAGIC, sealEscrow } from './seal-escrow.ts';
