import crypto from 'node:crypto';

import t from 'tap';

import {
  AvId, MECH_TYPE_LIST, NTLMSSP_OID, NegState, NtlmAuthenticator, decodeNegTokenResp, deriveNtlmKeys, encodeNegTokenResp,
  lmv2Response, ntlmMic, ntlmSign, ntlmv2ClientChallenge, ntlmv2Response, ntowfv2, parseAvPairs, parseChallengeMessage,
} from '../appliance/sources/smb/ntlm-authenticator.ts';
import {
  SIGNING_AES_CMAC, SIGNING_AES_GMAC, SIGNING_HMAC_SHA256, aesCmac, decryptMessage, deriveSmb3Keys, encryptMessage, kdfSha256,
  md4, preauthHashUpdate, rc4, signMessage, verifyMessage,
} from '../appliance/sources/smb/smb-crypto.ts';

/** Hex with any whitespace, as the specs print it. */
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const HF = (code: string) => ({ code });

// ---------------------------------------------------------------------------
// Published data used below.
//
// [BLOG-KEYS]  Microsoft Open Specifications blog, "SMB 2 and SMB 3 security in
//   Windows 10: the anatomy of signing and cryptographic keys" (2017), Appendix:
//   key derivation examples and the NTLMv2 SessionKey calculation example. The
//   SMB messages below are its SMB 3.1.1 multichannel trace (user
//   administrator, domain SUT311, password Password01!).
// [BLOG-ENC30] "Encryption in SMB 3.0: a protocol perspective" (2012).
// [BLOG-ENC311] "SMB 3.1.1 Encryption in Windows 10" (2015), Appendix.
// [MS-NLMP] §4.2.4 NTLMv2 Authentication examples.

const CH1 = {
  negotiateRequest: hex(`FE534D4240000100000000000000800000000000000000000100000000000000FFFE000000000000
    00000000000000000000000000000000000000000000000024000500000000003F000000ECD86F32
    6276024F9F7752B89BB33F3A70000000020000000202100200030203110300000100260000000000
    010020000100FA49E6578F1F3A9F4CD3E9CC14A67AA884B3D05844E0E5A118225C15887F32FF0000
    0200060000000000020002000100`),
  negotiateResponse: hex(`FE534D4240000100000000000000010001000000000000000100000000000000FFFE000000000000
    000000000000000000000000000000000000000000000000410001001103020039CBCAF329714942
    BDCE5D60F09AB3FB2F000000000080000000800000008000D8DAE5ADCBAED00109094AB095AED001
    80004001C00100006082013C06062B0601050502A08201303082012CA01A3018060A2B0601040182
    3702021E060A2B06010401823702020AA282010C048201084E45474F455854530100000000000000
    60000000700000007C7CC0FD06D6362D02DDE1CF343BFE292900F49750B4AA97934D9C4296B26E51
    FD370471B235E15A50DAE15BD5489C87000000000000000060000000010000000000000000000000
    5C33530DEAF90D4DB2EC4AE3786EC3084E45474F4558545303000000010000004000000098000000
    7C7CC0FD06D6362D02DDE1CF343BFE295C33530DEAF90D4DB2EC4AE3786EC3084000000058000000
    3056A05430523027802530233121301F06035504031318546F6B656E205369676E696E6720507562
    6C6963204B65793027802530233121301F06035504031318546F6B656E205369676E696E67205075
    626C6963204B6579010026000000000001002000010060A3C3B95C3C7CCD51EC536648D9B3AC74C4
    83CA5B65385A251117BEB30712E50000020004000000000001000200`),
  setupRequest1: hex(`FE534D4240000100000000000100800000000000000000000200000000000000FFFE000000000000
    00000000000000000000000000000000000000000000000019000001010000000000000058004A00
    0000000000000000604806062B0601050502A03E303CA00E300C060A2B06010401823702020AA22A
    04284E544C4D5353500001000000978208E200000000000000000000000000000000060380250000
    000F`),
  setupResponse1: hex(`FE534D4240000100160000C00100010001000000000000000200000000000000FFFE000000000000
    190000000010000000000000000000000000000000000000090000004800B300A181B03081ADA003
    0A0101A10C060A2B06010401823702020AA281970481944E544C4D53535000020000000C000C0038
    00000015828AE20D1D8BA31179D008000000000000000050005000440000000A0092270000000F53
    005500540033003100310002000C0053005500540033003100310001000C00530055005400330031
    00310004000C0053005500540033003100310003000C0053005500540033003100310007000800A1
    A1F5ADCBAED00100000000`),
  setupRequest2: hex(`FE534D4240000100000000000100800000000000000000000300000000000000FFFE000000000000
    1900000000100000000000000000000000000000000000001900000101000000000000005800CF01
    0000000000000000A18201CB308201C7A0030A0101A28201AA048201A64E544C4D53535000030000
    001800180090000000EE00EE00A80000000C000C00580000001A001A0064000000120012007E0000
    001000100096010000158288E2060380250000000FECAC77A5F385A8BF9C38C706EEEDDCD3530055
    005400330031003100610064006D0069006E006900730074007200610074006F0072004400520049
    0056004500520033003100310000000000000000000000000000000000000000000000000063078E
    B639FE03E20A231C3AE3BF23080101000000000000A1A1F5ADCBAED001BC4AD05F223CC90F000000
    0002000C0053005500540033003100310001000C0053005500540033003100310004000C00530055
    00540033003100310003000C0053005500540033003100310007000800A1A1F5ADCBAED001060004
    00020000000800300030000000000000000000000000300000B61FEFCAA857EA57BF1EDCEBF8974B
    8E0EBA5A6DFD9D07A31D11B548F8C9D0CC0A00100000000000000000000000000000000000090016
    0063006900660073002F005300550054003300310031000000000000000000000000003B9BDFF38F
    5EE8F9663F11A0F4C03A78A31204100100000063775A9A5FD97F0600000000`),
  setupResponse2: hex(`FE534D4240000100000000000100800009000000000000000300000000000000FFFE000000000000
    1900000000100000EBE146DA120BA25FC3376A49DFE31BC10900000048001D00A11B3019A0030A01
    00A3120410010000003B453CDC3524164200000000`),
  sessionKey: hex('270E1BA896585EEB7AF3472D3B4C75A7'),
  preauth: hex(`0DD13628CC3ED218EF9DF9772D436D0887AB9814BFAE63A80AA845F36909DB7928622DDDAD522D97
    51640A459762C5A9D6BB084CBB3CE6BDADEF5D5BCE3C6C01`),
};

/** The second channel (session binding) of the same trace. */
const CH2 = {
  setupRequest1: hex(`FE534D4240000100000000000100800008000000000000000200000000000000FFFE000000000000
    190000000010000068BD0C58F613CE1334B1EB51C68D39EA19000101010000000000000058004A00
    0000000000000000604806062B0601050502A03E303CA00E300C060A2B06010401823702020AA22A
    04284E544C4D5353500001000000978208E200000000000000000000000000000000060380250000
    000F`),
  setupResponse1: hex(`FE534D4240000100160000C00100010009000000000000000200000000000000FFFE000000000000
    1900000000100000014A71CAE724995E612430E2BE87578C090000004800B300A181B03081ADA003
    0A0101A10C060A2B06010401823702020AA281970481944E544C4D53535000020000000C000C0038
    00000015828AE23823DA68E32D2FE1000000000000000050005000440000000A0092270000000F53
    005500540033003100310002000C0053005500540033003100310001000C00530055005400330031
    00310004000C0053005500540033003100310003000C005300550054003300310031000700080041
    3B42AECBAED00100000000`),
  setupRequest2: hex(`FE534D4240000100000000000100800008000000000000000300000000000000FFFE000000000000
    19000000001000003CA64529ACAE57B26DCEC17B14E477D71900010101000000000000005800CF01
    0000000000000000A18201CB308201C7A0030A0101A28201AA048201A64E544C4D53535000030000
    001800180090000000EE00EE00A80000000C000C00580000001A001A0064000000120012007E0000
    001000100096010000158288E2060380250000000FED00E0F3D901F7B77E98071474F83009530055
    005400330031003100610064006D0069006E006900730074007200610074006F0072004400520049
    00560045005200330031003100000000000000000000000000000000000000000000000000A46794
    DA5D2033965D5339E1A675B79B0101000000000000413B42AECBAED0018E4D343661BA6A75000000
    0002000C0053005500540033003100310001000C0053005500540033003100310004000C00530055
    00540033003100310003000C0053005500540033003100310007000800413B42AECBAED001060004
    00020000000800300030000000000000000000000000300000B61FEFCAA857EA57BF1EDCEBF8974B
    8E0EBA5A6DFD9D07A31D11B548F8C9D0CC0A00100000000000000000000000000000000000090016
    0063006900660073002F00530055005400330031003100000000000000000000000000C8C61D67CE
    697693891336917655DDD3A3120410010000005122F070A7314A9B00000000`),
  setupResponse2: hex(`FE534D4240000100000000000100800009000000000000000300000000000000FFFE000000000000
    19000000001000008D604217FFBACF40635BF9D8729921500900000048001D00A11B3019A0030A01
    00A312041001000000CFB046FC5D368E2200000000`),
  sessionKey: hex('84B9DBB730116A8FA6E9889555C265F9'),
  preauth: hex(`EA3BF912B11CBFEC5B1889E8209614218687F82FA5294521AD3063425E49E88A10BD022124CE2512
    3BC9111F52D9566BA88BF46344E6063DC5E3FF0389026F6C`),
};

/** The security buffer of a SESSION_SETUP request (§2.2.5) or response (§2.2.6). */
function securityBuffer(message: Buffer): Buffer {
  const fromServer = (message.readUInt32LE(16) & 1) !== 0;
  const offset = message.readUInt16LE(64 + (fromServer ? 4 : 12));
  const length = message.readUInt16LE(64 + (fromServer ? 6 : 14));
  return message.subarray(offset, offset + length);
}

/** The NTLM messages inside a channel's SESSION_SETUP exchange. */
function ntlmMessages(ch: typeof CH1 | typeof CH2) {
  const init = securityBuffer(ch.setupRequest1);
  const challengeToken = securityBuffer(ch.setupResponse1);
  const authToken = securityBuffer(ch.setupRequest2);
  return {
    negotiate: init.subarray(init.length - 40), // the NegTokenInit's mechToken is its last element
    challengeToken,
    challenge: decodeNegTokenResp(challengeToken).responseToken!,
    authToken,
    authenticate: decodeNegTokenResp(authToken).responseToken!,
    finalToken: securityBuffer(ch.setupResponse2),
  };
}

/** [MS-NLMP] §4.2.4.3 CHALLENGE_MESSAGE (Server "Server", domain "Domain", challenge 0123456789abcdef). */
const NLMP_CHALLENGE = hex(`4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef0000000000000000
  2400240044000000060070170000000f53006500720076006500720002000c0044006f006d006100
  69006e0001000c0053006500720076006500720000000000`);

// ---------------------------------------------------------------------------

t.test('MD4: the RFC 1320 appendix A.5 test suite', async (t) => {
  const vectors: [string, string][] = [
    ['', '31d6cfe0d16ae931b73c59d7e0c089c0'],
    ['a', 'bde52cb31de33e46245e05fbdbd6fb24'],
    ['abc', 'a448017aaf21d8525fc10ae87aa6729d'],
    ['message digest', 'd9130a8164549fe818874806e1c7014b'],
    ['abcdefghijklmnopqrstuvwxyz', 'd79e1c308aa5bbcdeea8ed63df412da9'],
    ['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', '043f8582f241db351ce627e153e7f0e4'],
    ['12345678901234567890123456789012345678901234567890123456789012345678901234567890', 'e33b4ddc9c38f2199c3e7b164fcc0536'],
  ];
  for (const [input, digest] of vectors) t.equal(md4(Buffer.from(input, 'latin1')).toString('hex'), digest, `MD4("${input}")`);
  // [BLOG-KEYS]: NtHash = MD4(UNICODE("Password01!"))
  t.equal(md4(Buffer.from('Password01!', 'utf16le')).toString('hex'), '7c4fe5eada682714a036e39378362bab', 'the NT hash of the trace');
});

t.test('RC4: RFC 6229 keystream and the classic vectors', async (t) => {
  const stream = rc4(hex('0102030405'), Buffer.alloc(272));
  t.equal(stream.subarray(0, 16).toString('hex'), 'b2396305f03dc027ccc3524a0a1118a8', 'RFC 6229 40-bit key, offset 0');
  t.equal(stream.subarray(16, 32).toString('hex'), '6982944f18fc82d589c403a47a0d0919', 'offset 16');
  t.equal(stream.subarray(240, 256).toString('hex'), '28cb1132c96ce286421dcaadb8b69eae', 'offset 240');
  t.equal(stream.subarray(256, 272).toString('hex'), '1cfcf62b03eddb641d77dfcf7f8d8c93', 'offset 256');
  t.equal(rc4(Buffer.from('Key'), Buffer.from('Plaintext')).toString('hex'), 'bbf316e8d940af0ad3');
  t.equal(rc4(Buffer.from('Wiki'), Buffer.from('pedia')).toString('hex'), '1021bf0420');
  t.equal(rc4(Buffer.from('Secret'), Buffer.from('Attack at dawn')).toString('hex'), '45a01f645fc35b383552544b9bf5');
  t.same(rc4(Buffer.from('Key'), rc4(Buffer.from('Key'), Buffer.from('round trip'))), Buffer.from('round trip'), 'decrypts');
  t.throws(() => rc4(Buffer.alloc(0), Buffer.alloc(1)), HF('HF_INVALID_ARGUMENT'), 'an empty key is refused');
});

/** AES-CMAC written straight from RFC 4493 §2.4, one block at a time: the reference for the fast version. */
function referenceCmac(key: Buffer, m: Buffer): Buffer {
  const aes = (b: Buffer) => crypto.createCipheriv('aes-128-ecb', key, null).setAutoPadding(false).update(b);
  const dbl = (b: Buffer) => {
    const out = Buffer.alloc(16);
    for (let i = 0; i < 16; i++) out[i] = ((b[i]! << 1) | (i < 15 ? b[i + 1]! >> 7 : 0)) & 0xff;
    if (b[0]! & 0x80) out[15] = out[15]! ^ 0x87;
    return out;
  };
  const k1 = dbl(aes(Buffer.alloc(16)));
  const k2 = dbl(k1);
  const n = Math.max(1, Math.ceil(m.length / 16));
  const complete = m.length > 0 && m.length % 16 === 0;
  const last = Buffer.alloc(16);
  m.copy(last, 0, (n - 1) * 16);
  if (!complete) last[m.length - (n - 1) * 16] = 0x80;
  let x = Buffer.alloc(16);
  for (let i = 0; i < n - 1; i++) {
    const y = Buffer.alloc(16);
    for (let j = 0; j < 16; j++) y[j] = x[j]! ^ m[i * 16 + j]!;
    x = aes(y);
  }
  const y = Buffer.alloc(16);
  for (let j = 0; j < 16; j++) y[j] = x[j]! ^ last[j]! ^ (complete ? k1 : k2)[j]!;
  return aes(y);
}

t.test('AES-CMAC: the four RFC 4493 examples, and agreement with a block-by-block reference', async (t) => {
  const key = hex('2b7e151628aed2a6abf7158809cf4f3c');
  const m = hex(`6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                 30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710`);
  t.equal(aesCmac(key, m.subarray(0, 0)).toString('hex'), 'bb1d6929e95937287fa37d129b756746', 'Example 1: empty');
  t.equal(aesCmac(key, m.subarray(0, 16)).toString('hex'), '070a16b46b4d4144f79bdd9dd04a287c', 'Example 2: 16 bytes');
  t.equal(aesCmac(key, m.subarray(0, 40)).toString('hex'), 'dfa66747de9ae63030ca32611497c827', 'Example 3: 40 bytes');
  t.equal(aesCmac(key, m.subarray(0, 64)).toString('hex'), '51f0bebf7e3b9d92fc49741779363cfe', 'Example 4: 64 bytes');
  const data = crypto.randomBytes(1024 * 1024 + 7);
  for (const n of [1, 15, 17, 31, 32, 33, 100, 4096, 65535, data.length]) {
    t.same(aesCmac(key, data.subarray(0, n)), referenceCmac(key, data.subarray(0, n)), `${n} bytes`);
  }
  t.throws(() => aesCmac(Buffer.alloc(32), m), HF('HF_INVALID_ARGUMENT'), 'AES-128 only');
});

t.test('SMB 3.x keys: the key derivation examples Microsoft published [BLOG-KEYS]', async (t) => {
  const k30 = deriveSmb3Keys(hex('7CD451825D0450D235424E44BA6E78CC'), 0x0300, null, 0);
  t.equal(k30.signingKey.toString('hex'), '0b7e9c5cac36c0f6ea9ab275298cedce', '3.0 SigningKey');
  t.equal(k30.encryptionKey.toString('hex'), 'fad27796665b313ebb578f388632b4f7', '3.0 EncryptionKey');
  t.equal(k30.decryptionKey.toString('hex'), 'b0f0427f7ceb416d1d9dcc0cd4f99447', '3.0 DecryptionKey');
  t.equal(k30.applicationKey.toString('hex'), 'bb23a4575aa26c721af525af15a87b4f', '3.0 ApplicationKey');
  t.equal(deriveSmb3Keys(hex('4E01A2B313BCF660CC250BEF021AEDE6'), 0x0302, null, 1).signingKey.toString('hex'),
    'ba1a17dbbfec349bca105563d598952f', '3.0 second channel SigningKey (3.0.2 uses the same labels)');

  const k311 = deriveSmb3Keys(CH1.sessionKey, 0x0311, CH1.preauth, 2);
  t.equal(k311.signingKey.toString('hex'), '73fe7a9a77bef0bde49c650d8ccb5f76', '3.1.1 SigningKey');
  t.equal(k311.encryptionKey.toString('hex'), '629bcbc54422a0f572b97f45989b6073', '3.1.1 EncryptionKey');
  t.equal(k311.decryptionKey.toString('hex'), 'e2af0dcefac68da71a0dfbd0d1350d74', '3.1.1 DecryptionKey');
  t.equal(k311.applicationKey.toString('hex'), '6d7ad7954e9ec61e907b4d473dc178ff', '3.1.1 ApplicationKey');
  t.equal(deriveSmb3Keys(CH2.sessionKey, 0x0311, CH2.preauth, 2).signingKey.toString('hex'),
    'c962bca1a9dd1697b030644199705431', '3.1.1 second channel SigningKey');

  // [BLOG-ENC30], [BLOG-ENC311]
  t.equal(deriveSmb3Keys(hex('B4546771B515F766A86735532DD6C4F0'), 0x0300, null, 1).encryptionKey.toString('hex'),
    '261b72350558f2e9dcf613070383edbf', '3.0 encryption example key');
  const enc311 = deriveSmb3Keys(hex('419FDDF34C1E001909D362AE7FB6AF79'), 0x0311, hex(`B23F3CBFD69487D9832B79B1594A367CDD950909
    B774C3A4C412B4FCEA9EDDDBA7DB256BA2EA30E977F11F9B113247578E0E915C6D2A513B8F2FCA5707DC8770`), 2);
  t.equal(enc311.encryptionKey.toString('hex'), 'a2f5e80e5d59103034f32e52f698e5ec', '3.1.1 encryption example key');
  t.equal(enc311.decryptionKey.toString('hex'), '748c50868c90f302962a5c35f5f9a8bf', '3.1.1 decryption example key');

  t.equal(kdfSha256(hex('7CD451825D0450D235424E44BA6E78CC'), Buffer.from('SMB2AESCMAC\0'), Buffer.from('SmbSign\0'), 128).toString('hex'),
    '0b7e9c5cac36c0f6ea9ab275298cedce', 'kdfSha256 directly');

  t.throws(() => deriveSmb3Keys(CH1.sessionKey, 0x0311, null, 2), HF('HF_INVALID_ARGUMENT'), '3.1.1 needs the pre-auth hash');
  t.throws(() => deriveSmb3Keys(CH1.sessionKey, 0x0210, null, 0), HF('HF_INVALID_ARGUMENT'), '2.1 has no SMB3 keys');
  t.throws(() => deriveSmb3Keys(CH1.sessionKey, 0x0311, CH1.preauth, 9), HF('HF_INVALID_ARGUMENT'), 'unknown cipher');
});

t.test('SMB 3.1.1 keys for AES-256 (no published vector: checked against the spec text only)', async (t) => {
  // MS-SMB2 §3.2.5.3.1: 256-bit ciphers derive 32-byte keys with L = 256 from
  // Session.FullSessionKey; signing and application keys stay on the first 16 bytes.
  const full = crypto.randomBytes(32);
  const k = deriveSmb3Keys(full, 0x0311, CH1.preauth, 4);
  t.equal(k.encryptionKey.length, 32);
  t.equal(k.decryptionKey.length, 32);
  t.same(k.encryptionKey, kdfSha256(full, Buffer.from('SMBC2SCipherKey\0'), CH1.preauth, 256), 'from the full key, L = 256');
  t.same(k.signingKey, kdfSha256(full.subarray(0, 16), Buffer.from('SMBSigningKey\0'), CH1.preauth, 128), 'signing from the first 16 bytes');
  t.notSame(k.encryptionKey.subarray(0, 16), deriveSmb3Keys(full, 0x0311, CH1.preauth, 2).encryptionKey, 'L is part of the input');
  const ntlm = deriveSmb3Keys(CH1.sessionKey, 0x0311, CH1.preauth, 3);
  t.same(ntlm.decryptionKey, kdfSha256(CH1.sessionKey, Buffer.from('SMBS2CCipherKey\0'), CH1.preauth, 256), 'a 16-byte NTLM key is the full key');
  t.same(deriveSmb3Keys(hex('0102'), 0x0300, null, 0).signingKey,
    deriveSmb3Keys(hex('01020000000000000000000000000000'), 0x0300, null, 0).signingKey, 'a short session key is zero-padded');
});

t.test('pre-auth integrity hash: the 3.1.1 chain of the published trace [BLOG-KEYS]', async (t) => {
  let h: Buffer = Buffer.alloc(64);
  h = preauthHashUpdate(h, CH1.negotiateRequest);
  t.equal(h.toString('hex').toUpperCase(), 'DD94EFC5321BB618A2E208BA8920D2F422992526947A409B5037DE1E0FE8C7362B8C47122594CDE0CE26AA9DFC8BCDBDE0621957672623351A7540F1E54A0426');
  h = preauthHashUpdate(h, CH1.negotiateResponse);
  t.equal(h.toString('hex').toUpperCase(), '324BFA92A4F3A190E466EBEA08D9C110DC88BFED758D9846ECC6F541CC1D02AE3C94A79F36011E997E13F841B91B50957AD07B19C8E2539C0B23FDAE09D2C513');
  h = preauthHashUpdate(h, CH1.setupRequest1);
  t.equal(h.toString('hex').toUpperCase(), 'AC0B0F2B9986257700365E416D142A6EDC96DF03594A19E52A15F6BD0D041CD5D432F8ED42C55E33197A50C9EC00F1462B50C592211B1471A04B56088FDFD5F9');
  h = preauthHashUpdate(h, CH1.setupResponse1);
  t.equal(h.toString('hex').toUpperCase(), '2729E3440DFDDD839E37193F6E8F20C20CEFB3469E453A70CD980EEC06B8835740A73760085633364C8989895ECE81BF102DEEB14D4B7D48AFA76901A7A38387');
  h = preauthHashUpdate(h, CH1.setupRequest2);
  t.same(h, CH1.preauth, 'the value the keys are derived from');
  t.throws(() => preauthHashUpdate(Buffer.alloc(32), CH1.setupRequest1), HF('HF_INVALID_ARGUMENT'));
});

t.test('AES-CMAC signing: the signed messages of the published 3.1.1 trace verify and re-sign identically', async (t) => {
  const master = deriveSmb3Keys(CH1.sessionKey, 0x0311, CH1.preauth, 2).signingKey;
  const channel2 = deriveSmb3Keys(CH2.sessionKey, 0x0311, CH2.preauth, 2).signingKey;
  const signed: [string, Buffer, Buffer][] = [
    ['final SESSION_SETUP response, signed with Session.SigningKey', CH1.setupResponse2, master],
    ['binding SESSION_SETUP request 1, signed with the bound session\'s key (§3.2.4.2.3)', CH2.setupRequest1, master],
    ['MORE_PROCESSING binding response, Session.SigningKey (§3.3.4.1.1)', CH2.setupResponse1, master],
    ['binding SESSION_SETUP request 2', CH2.setupRequest2, master],
    ['second channel\'s final response, Channel.SigningKey', CH2.setupResponse2, channel2],
  ];
  for (const [what, message, key] of signed) {
    const before = Buffer.from(message);
    t.ok(verifyMessage(SIGNING_AES_CMAC, key, message), what);
    t.same(message, before, 'verify leaves the buffer as it was');
    const copy = Buffer.from(message);
    signMessage(SIGNING_AES_CMAC, key, copy);
    t.same(copy, message, 'signMessage writes the same signature');
  }
  t.notOk(verifyMessage(SIGNING_AES_CMAC, channel2, CH1.setupResponse2), 'the wrong key fails');
  for (const at of [0, 47, 48, 63, 64, CH1.setupResponse2.length - 1]) {
    const bad = Buffer.from(CH1.setupResponse2);
    bad[at] = bad[at]! ^ 0x01;
    t.notOk(verifyMessage(SIGNING_AES_CMAC, master, bad), `a flipped bit at byte ${at} fails`);
  }
  t.notOk(verifyMessage(SIGNING_AES_CMAC, master, CH1.setupResponse2.subarray(0, 63)), 'shorter than a header');
});

/** A plausible signed SMB2 message: a header and `bodyLength` bytes of body. */
function smbMessage(bodyLength: number, opts: { messageId?: bigint; command?: number; fromServer?: boolean } = {}): Buffer {
  const m = crypto.randomBytes(64 + bodyLength);
  hex('FE534D42').copy(m, 0);
  m.writeUInt16LE(64, 4);
  m.writeUInt16LE(opts.command ?? 0x0008, 12);
  m.writeUInt32LE(0x08 | (opts.fromServer ? 1 : 0), 16);
  m.writeBigUInt64LE(opts.messageId ?? 7n, 24);
  return m;
}

t.test('AES-GMAC and HMAC-SHA256 signing (no published SMB vectors: round trips and the §3.1.4.1 nonce)', async (t) => {
  const key = crypto.randomBytes(16);
  for (const alg of [SIGNING_AES_GMAC, SIGNING_HMAC_SHA256, SIGNING_AES_CMAC] as const) {
    const m = smbMessage(1000);
    signMessage(alg, key, m);
    t.ok(verifyMessage(alg, key, m), `${alg}: a signed message verifies`);
    for (const at of [4, 12, 24, 48, 63, 64, 1063]) {
      const bad = Buffer.from(m);
      bad[at] = bad[at]! ^ 0x80;
      t.notOk(verifyMessage(alg, key, bad), `${alg}: a flipped byte at ${at} fails`);
    }
    t.notOk(verifyMessage(alg, crypto.randomBytes(16), m), `${alg}: another key fails`);
  }
  // HMAC-SHA256: the signature is the first 16 bytes of the HMAC over the message with a zero Signature
  const h = smbMessage(100);
  signMessage(SIGNING_HMAC_SHA256, key, h);
  const zeroed = Buffer.from(h);
  zeroed.fill(0, 48, 64);
  t.same(h.subarray(48, 64), crypto.createHmac('sha256', key).update(zeroed).digest().subarray(0, 16), 'HMAC-SHA256 truncated to 16');

  // GMAC: the nonce is MessageId || u32 (bit 0: from server, bit 1: CANCEL), §3.1.4.1, and the
  // signature is the GCM tag over the zero-signature message as AAD.
  const gmac = (m: Buffer, nonceWord: number) => {
    const z = Buffer.from(m);
    z.fill(0, 48, 64);
    const nonce = Buffer.alloc(12);
    z.copy(nonce, 0, 24, 32);
    nonce.writeUInt32LE(nonceWord, 8);
    const c = crypto.createCipheriv('aes-128-gcm', key, nonce);
    c.setAAD(z);
    c.final();
    return c.getAuthTag();
  };
  for (const [what, m, word] of [
    ['a client request', smbMessage(64, { messageId: 0x0102030405060708n }), 0],
    ['a server response', smbMessage(64, { messageId: 0x1122n, fromServer: true }), 1],
    ['a CANCEL request', smbMessage(4, { messageId: 9n, command: 0x000c }), 2],
  ] as const) {
    signMessage(SIGNING_AES_GMAC, key, m);
    t.same(m.subarray(48, 64), gmac(m, word), `GMAC nonce for ${what}`);
  }
  const server = smbMessage(64, { fromServer: true });
  signMessage(SIGNING_AES_GMAC, key, server);
  const asClient = Buffer.from(server);
  asClient.writeUInt32LE((asClient.readUInt32LE(16) & ~1) >>> 0, 16);
  t.notOk(verifyMessage(SIGNING_AES_GMAC, key, asClient), 'a response cannot be replayed as a request (role bit)');
  t.throws(() => signMessage(SIGNING_AES_GMAC, key, Buffer.alloc(63)), HF('HF_INVALID_ARGUMENT'), 'shorter than a header');
});

t.test('encryption: the SMB 3.0 (AES-128-CCM) and 3.1.1 (AES-128-GCM) examples [BLOG-ENC30] [BLOG-ENC311]', async (t) => {
  const write30 = hex(`FE534D4240000100000000000900400008000000000000000400000000000000FFFE0000010000001100001400E40800
    00000000000000000000000000000000310070001700000000000000000000001501000039000002010000003902000000000000
    000000007000000000000000536D623320656E6372797074696F6E2074657374696E67`);
  const frame30 = encryptMessage(1, hex('261B72350558F2E9DCF613070383EDBF'), 0x8E40014000011n, write30, hex('66E69A111892584FB5ED524A744DA3EE'));
  t.same(frame30, hex(`FD534D4281A286535415445DAE393921E44FA42E66E69A111892584FB5ED524A744DA3EE87000000000001001100001400E40800
    25C8FEE16605A437832D1CD52DA9F4645333482A175FE5384563F45FCDAFAEF38BC62BA4D5C62897996625A44C29BE5658DE2E61
    17585779E7B59FFD971278D08580D7FA899E410E910EABF5AA1DB43050B33B49182637759AC15D84BFCDF5B6B238993C0F4CF4D6
    012023F6C627297075D84B7803912D0A9639634453595EF3E33FFE4E7AC2AB`), '3.0 WRITE request, encrypted');
  const resp30 = decryptMessage(1, hex('8FE2B57EC34D2DB5B1A9727F526BBDB5'), hex(`FD534D42A6015530A18F6D9AFFE22AFAE8E66484
    86000000000000001100001400E4080050000000000001001100001400E40800DBF46435C5F14169293CE079E344479BF670227E
    49873F458672C3098DAC467DD5809F369D674091665157871483E01F7BECD02064EAC3E235F913668BBC2F097980D4B378F1993E
    FF6E60D177309E5B`));
  t.equal(resp30.sessionId, 0x8E40014000011n);
  t.same(resp30.message, hex(`FE534D4240000100000000000900210009000000000000000400000000000000FFFE0000010000001100001400E40800
    0000000000000000000000000000000011000000170000000000000000000000`), '3.0 WRITE response, decrypted');

  const write311 = hex(`FE534D4240000100000000000900010008000000000000000500000000000000FFFE000001000000
    25000000001000000000000000000000000000000000000031007000170000000000000000000000
    0600000004000000010000000400000000000000000000007000000000000000536D623320656E63
    72797074696F6E2074657374696E67`);
  t.same(encryptMessage(2, hex('A2F5E80E5D59103034F32E52F698E5EC'), 0x100000000025n, write311, hex('C7D6822D269CAF48904C664C')),
    hex(`FD534D42BD73D97D2BC9001BCAFAC0FDFF5FEEBCC7D6822D269CAF48904C664C0000000087000000
    0000010025000000001000006ECDD2A7AFC7B47763057A041B8FD4DAFFE990B70C9E09D36C084E02
    D14EF247F8BDE38ACF6256F8B1D3B56F77FBDEB312FEA5E92CBCC1ED8FB2EBBFAA75E49A4A394BB4
    4576545567C24D4C014D47C9FBDFDAFD2C4F9B72F8D256452620A299F48E29E53D6B61D1C13A19E9
    1AF013F00D17E3ABC2FC3D36C8C1B6B93973253852DBD442E46EE8`), '3.1.1 WRITE request, encrypted');
  const resp311 = decryptMessage(2, hex('748C50868C90F302962A5C35F5F9A8BF'), hex(`FD534D42ACBE1CB7ED343ADF1725EF144D90D4B0
    E06831DD2E8EB7B4000000000000000050000000 00000100250000000010000026BBBF949983A6C1C796559D0F2C510CB651D1F7
    B6AC8DED32A2A0B8F2D793A815C6F6B848D69767A215841A42D400AE6DDB5F0B44173A014973321FDD7950DA6179159B82E03C9E
    18A050FF0EA1C967`));
  t.equal(resp311.sessionId, 0x100000000025n);
  t.same(resp311.message, hex(`FE534D4240000100000000000900010001000000000000000500000000000000FFFE000001000000
    25000000001000000000000000000000000000000000000011000000170000000000000000000000`), '3.1.1 WRITE response, decrypted');
});

t.test('encryption: round trips in all four ciphers, tamper detection, malformed frames', async (t) => {
  for (const [cipher, keyLength, nonceLength] of [[1, 16, 11], [2, 16, 12], [3, 32, 11], [4, 32, 12]] as const) {
    const key = crypto.randomBytes(keyLength);
    for (const size of [64, 1000, 1024 * 1024 + 64]) {
      const message = smbMessage(size - 64);
      const frame = encryptMessage(cipher, key, 0x1122334455667788n, message);
      t.equal(frame.length, 52 + size);
      t.same(frame.subarray(20 + nonceLength, 36), Buffer.alloc(16 - nonceLength), `cipher ${cipher}: unused nonce bytes are zero`);
      t.equal(frame.readUInt16LE(42), 1, 'Flags = 0x0001');
      const out = decryptMessage(cipher, key, frame);
      t.equal(out.sessionId, 0x1122334455667788n);
      t.ok(out.message.equals(message), `cipher ${cipher}: ${size} bytes round trip`);
    }
    const message = smbMessage(200);
    const frame = encryptMessage(cipher, key, 5n, message);
    t.notSame(encryptMessage(cipher, key, 5n, message).subarray(20, 36), frame.subarray(20, 36), 'a fresh random nonce each time');
    for (const [what, at] of [['ciphertext', 52 + 100], ['tag', 4], ['nonce', 20], ['OriginalMessageSize-adjacent Reserved', 40], ['SessionId', 44]] as const) {
      const bad = Buffer.from(frame);
      bad[at] = bad[at]! ^ 0x01;
      t.throws(() => decryptMessage(cipher, key, bad), HF('HF_SOURCE_PROTOCOL'), `cipher ${cipher}: a flipped bit in the ${what} is detected`);
    }
    t.throws(() => decryptMessage(cipher, crypto.randomBytes(keyLength), frame), HF('HF_SOURCE_PROTOCOL'), 'the wrong key');
    const short = Buffer.from(frame.subarray(0, frame.length - 1));
    t.throws(() => decryptMessage(cipher, key, short), HF('HF_SOURCE_PROTOCOL'), 'OriginalMessageSize does not match');
    t.throws(() => decryptMessage(cipher, key, frame.subarray(0, 52)), HF('HF_SOURCE_PROTOCOL'), 'a bare header');
    t.throws(() => decryptMessage(cipher, key, frame.subarray(0, 10)), HF('HF_SOURCE_PROTOCOL'), 'a truncated header');
    const wrongId = Buffer.from(frame);
    wrongId[0] = 0xfe;
    t.throws(() => decryptMessage(cipher, key, wrongId), HF('HF_SOURCE_PROTOCOL'), 'ProtocolId is checked');
    const wrongFlags = Buffer.from(frame);
    wrongFlags.writeUInt16LE(2, 42);
    t.throws(() => decryptMessage(cipher, key, wrongFlags), HF('HF_SOURCE_PROTOCOL'), 'Flags is checked');
    t.throws(() => encryptMessage(cipher, key, 1n, message, Buffer.alloc(5)), HF('HF_INVALID_ARGUMENT'), 'a nonce of the wrong size');
  }
  t.throws(() => encryptMessage(2, crypto.randomBytes(32), 1n, smbMessage(0)), HF('HF_INVALID_ARGUMENT'), 'AES-128 with a 32-byte key');
  t.throws(() => encryptMessage(7, crypto.randomBytes(16), 1n, smbMessage(0)), HF('HF_INVALID_ARGUMENT'), 'unknown cipher');
});

t.test('NTLMv2: the MS-NLMP §4.2.4 example', async (t) => {
  const ntowf = ntowfv2('Password', 'User', 'Domain');
  t.equal(ntowf.toString('hex'), '0c868a403bfd7a93a3001ef22ef02e3f', '§4.2.4.1.1 NTOWFv2');
  const serverChallenge = hex('0123456789abcdef');
  const clientChallenge = hex('aaaaaaaaaaaaaaaa');
  const avPairs = hex('02000c0044006f006d00610069006e0001000c00530065007200760065007200 00000000');
  const temp = ntlmv2ClientChallenge(Buffer.alloc(8), clientChallenge, avPairs);
  const r = ntlmv2Response(ntowf, serverChallenge, temp);
  t.equal(r.ntProofStr.toString('hex'), '68cd0ab851e51c96aabc927bebef6a1c', '§4.2.4.2.2 NTProofStr');
  t.equal(r.sessionBaseKey.toString('hex'), '8de40ccadbc14a82f15cb0ad0de95ca3', '§4.2.4.1.2 session base key');
  t.equal(lmv2Response(ntowf, serverChallenge, clientChallenge).toString('hex'),
    '86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa', '§4.2.4.2.1 LMv2 response');
  const randomSessionKey = Buffer.alloc(16, 0x55);
  t.equal(rc4(r.sessionBaseKey, randomSessionKey).toString('hex'), 'c5dad2544fc9799094ce1ce90bc9d03e', '§4.2.4.2.3 encrypted session key');

  const keys = deriveNtlmKeys(randomSessionKey, 0xe2888235);
  t.equal(keys.clientSealingKey.toString('hex'), '59f600973cc4960a25480a7c196e4c58', '§4.2.4.4 SEALKEY');
  t.equal(keys.clientSigningKey.toString('hex'), '4788dc861b4782f35d43fd98fe1a2d39', '§4.2.4.4 SIGNKEY');
  // §4.2.4.4 GSS_WrapEx: the checksum before and after RC4 (the handle sealed the message first)
  const plaintext = Buffer.from('Plaintext', 'utf16le');
  const unsealed = ntlmSign(keys.clientSigningKey, null, 0, plaintext);
  t.equal(unsealed.toString('hex'), '01000000' + '70352851f2564309' + '00000000', 'HMAC_MD5 checksum');
  const stream = rc4(keys.clientSealingKey, Buffer.concat([plaintext, unsealed.subarray(4, 12)]));
  t.equal(stream.subarray(0, 18).toString('hex'), '54e50165bf1936dc996020c1811b0f06fb5f', 'sealed data');
  t.equal(stream.subarray(18).toString('hex'), '7fb38ec5c55d4976', 'RC4-sealed checksum');

  // §4.2.4.3: the whole AUTHENTICATE_MESSAGE, from the authenticator
  const auth = new NtlmAuthenticator({
    user: 'User', password: 'Password', domain: 'Domain', workstation: 'COMPUTER',
    random: (n) => Buffer.alloc(n, n === 8 ? 0xaa : 0x55), now: () => 0n,
  });
  auth.initialToken();
  const message = auth.respond(NLMP_CHALLENGE);
  const expected = hex(`4e544c4d5353500003000000180018006c00000054005400840000000c000c00480000000800080054000000
    100010005c00000010001000d8000000358288e20501280a0000000f44006f006d00610069006e0055007300650072
    0043004f004d005000550054004500520086c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa68cd0ab851e5
    1c96aabc927bebef6a1c01010000000000000000000000000000aaaaaaaaaaaaaaaa0000000002000c0044006f006d
    00610069006e0001000c005300650072007600650072000000000000000000c5dad2544fc9799094ce1ce90bc9d03e`);
  t.equal(message.readUInt32LE(60), 0xe2888235, 'NegotiateFlags as in the example');
  const withSpecVersion = Buffer.from(message);
  expected.copy(withSpecVersion, 64, 64, 72); // Version is informational: the example's is Windows XP's
  t.same(withSpecVersion, expected, 'the AUTHENTICATE_MESSAGE matches byte for byte (Version aside)');
  t.same(auth.sessionKey, randomSessionKey, 'ExportedSessionKey is the random session key');
  auth.complete(null);
  t.pass('a raw NTLMSSP server sends no final token');
});

t.test('NTLMv2 in SPNEGO against the Windows trace of [BLOG-KEYS]', async (t) => {
  const m = ntlmMessages(CH1);
  // The trace's own computation, step by step.
  const ntowf = ntowfv2('Password01!', 'administrator', 'SUT311');
  t.equal(ntowf.toString('hex'), 'aee3959b44a815f1eb28c9511b4f533b', 'NTOWFv2 (user upper-cased, domain as given)');
  const ntResponse = m.authenticate.subarray(168, 168 + 238);
  const r = ntlmv2Response(ntowf, hex('0D1D8BA31179D008'), ntResponse.subarray(16));
  t.equal(r.ntProofStr.toString('hex'), '63078eb639fe03e20a231c3ae3bf2308', 'NTProofStr');
  t.equal(r.sessionBaseKey.toString('hex'), 'b4cf22566926b1c069acd80e4d73c814', 'KeyExchangeKey');
  t.same(rc4(r.sessionBaseKey, m.authenticate.subarray(406, 422)), CH1.sessionKey, 'ExportedSessionKey = RC4(KeyExchangeKey, EncryptedRandomSessionKey)');
  const keys = deriveNtlmKeys(CH1.sessionKey, 0xe2888215);
  t.equal(keys.serverSigningKey.toString('hex'), 'e1bd8b416b0b709d295e12f2cf18e6c5');
  t.equal(keys.clientSigningKey.toString('hex'), 'd43f36c44bce0630250a09ea0c2e8c2c');
  t.equal(keys.serverSealingKey.toString('hex'), 'b0f5a0b32c81ff34a878e1409b3b0ef2');
  t.equal(keys.clientSealingKey.toString('hex'), '31e5557d99be13f1b2665c7c7c52ce70');
  const zeroMic = Buffer.from(m.authenticate);
  zeroMic.fill(0, 72, 88);
  t.same(ntlmMic(CH1.sessionKey, m.negotiate, m.challenge, zeroMic), m.authenticate.subarray(72, 88), 'the AUTHENTICATE MIC');
  t.same(ntlmSign(keys.clientSigningKey, keys.clientSealingKey, 0, MECH_TYPE_LIST), decodeNegTokenResp(m.authToken).mechListMIC,
    'the client\'s mechListMIC');
  t.same(ntlmSign(keys.serverSigningKey, keys.serverSealingKey, 0, MECH_TYPE_LIST), decodeNegTokenResp(m.finalToken).mechListMIC,
    'the server\'s mechListMIC');
  const m2 = ntlmMessages(CH2);
  const keys2 = deriveNtlmKeys(CH2.sessionKey, 0xe2888215);
  const zeroMic2 = Buffer.from(m2.authenticate);
  zeroMic2.fill(0, 72, 88);
  t.same(ntlmMic(CH2.sessionKey, m2.negotiate, m2.challenge, zeroMic2), m2.authenticate.subarray(72, 88), 'second channel MIC');
  t.same(ntlmSign(keys2.serverSigningKey, keys2.serverSealingKey, 0, MECH_TYPE_LIST), decodeNegTokenResp(m2.finalToken).mechListMIC,
    'second channel server mechListMIC');

  // The authenticator itself, fed the server's real tokens. With the trace's
  // client challenge and random session key its mechListMIC must be Windows'
  // (it covers only MechTypeList), and the server's must verify.
  const auth = new NtlmAuthenticator({
    user: 'administrator', password: 'Password01!', domain: 'SUT311', workstation: 'DRIVER311',
    random: (n) => (n === 8 ? hex('BC4AD05F223CC90F') : Buffer.from(CH1.sessionKey)),
  });
  const init = auth.initialToken();
  const windowsInit = securityBuffer(CH1.setupRequest1);
  t.equal(init.length, windowsInit.length);
  t.same(init.subarray(0, init.length - 28), windowsInit.subarray(0, windowsInit.length - 28), 'NegTokenInit framing and mechTypes as Windows sends them');
  t.equal(init.readUInt32LE(init.length - 28), 0xe2888235, 'our NEGOTIATE flags');

  const out = auth.respond(m.challengeToken);
  const resp = decodeNegTokenResp(out);
  t.equal(resp.negState, NegState.ACCEPT_INCOMPLETE);
  t.same(resp.mechListMIC, decodeNegTokenResp(m.authToken).mechListMIC, 'mechListMIC equals the one Windows sent');
  const am = resp.responseToken!;
  t.same(am.subarray(0, 12), hex('4e544c4d5353500003000000'), 'an AUTHENTICATE_MESSAGE');
  t.same(am.subarray(am.readUInt32LE(16), am.readUInt32LE(16) + am.readUInt16LE(12)), Buffer.alloc(24), 'LmChallengeResponse is Z(24) with a server timestamp');
  const nt = am.subarray(am.readUInt32LE(24), am.readUInt32LE(24) + am.readUInt16LE(20));
  t.same(nt.subarray(24, 32), hex('A1A1F5ADCBAED001'), 'the server\'s timestamp is used');
  t.same(nt.subarray(32, 40), hex('BC4AD05F223CC90F'), 'the client challenge');
  const pairs = parseAvPairs(nt.subarray(44, nt.length - 4));
  t.same(pairs.find((p) => p.id === AvId.FLAGS)?.value, hex('02000000'), 'MsvAvFlags says a MIC is present');
  t.same(pairs.find((p) => p.id === AvId.TIMESTAMP)?.value, hex('A1A1F5ADCBAED001'), 'the server\'s AV pairs are kept');
  const own = Buffer.from(am);
  own.fill(0, 72, 88);
  t.same(ntlmMic(CH1.sessionKey, init.subarray(init.length - 40), m.challenge, own), am.subarray(72, 88), 'our MIC covers our three messages');
  const ntowfServer = ntlmv2Response(ntowf, hex('0D1D8BA31179D008'), nt.subarray(16));
  t.same(nt.subarray(0, 16), ntowfServer.ntProofStr, 'a server holding the password accepts the NTProofStr');
  t.same(rc4(ntowfServer.sessionBaseKey, am.subarray(am.readUInt32LE(56), am.readUInt32LE(56) + 16)), CH1.sessionKey, 'and recovers the session key');

  t.throws(() => {
    const bad = Buffer.from(m.finalToken);
    bad[bad.length - 9] = bad[bad.length - 9]! ^ 1;
    const a2 = new NtlmAuthenticator({ user: 'administrator', password: 'Password01!', domain: 'SUT311', random: (n) => (n === 8 ? hex('BC4AD05F223CC90F') : Buffer.from(CH1.sessionKey)) });
    a2.initialToken();
    a2.respond(m.challengeToken);
    a2.complete(bad);
  }, HF('HF_SOURCE_AUTH_FAILED'), 'a wrong server mechListMIC fails the logon');
  auth.complete(m.finalToken);
  t.same(auth.sessionKey, CH1.sessionKey, 'the ExportedSessionKey');

  // ...which is all SMB needs: the keys derived from it verify the server's signed final response.
  const signingKey = deriveSmb3Keys(auth.sessionKey, 0x0311, CH1.preauth, 2).signingKey;
  t.ok(verifyMessage(SIGNING_AES_CMAC, signingKey, CH1.setupResponse2), 'the logon response verifies under the derived SigningKey');
});

t.test('NTLM: server refusals and raw NTLMSSP', async (t) => {
  const make = () => {
    const a = new NtlmAuthenticator({ user: 'u', password: 'p', domain: 'd' });
    a.initialToken();
    return a;
  };
  t.throws(() => make().respond(encodeNegTokenResp({ negState: NegState.REJECT })), HF('HF_SOURCE_AUTH_FAILED'), 'reject before the challenge');
  const a = make();
  a.respond(encodeNegTokenResp({ negState: NegState.ACCEPT_INCOMPLETE, supportedMech: NTLMSSP_OID, responseToken: NLMP_CHALLENGE }));
  t.throws(() => a.complete(encodeNegTokenResp({ negState: NegState.REJECT })), HF('HF_SOURCE_AUTH_FAILED'), 'reject at the end');
  const b = make();
  b.respond(encodeNegTokenResp({ negState: NegState.ACCEPT_INCOMPLETE, responseToken: NLMP_CHALLENGE }));
  t.throws(() => b.complete(encodeNegTokenResp({ negState: NegState.ACCEPT_INCOMPLETE })), HF('HF_SOURCE_PROTOCOL'), 'more rounds are not NTLM');
  t.throws(() => make().respond(encodeNegTokenResp({ negState: 1, supportedMech: hex('2a864886f712010202'), responseToken: NLMP_CHALLENGE })),
    HF('HF_SOURCE_PROTOCOL'), 'a Kerberos supportedMech is refused');
  t.throws(() => make().respond(encodeNegTokenResp({ negState: 1 })), HF('HF_SOURCE_PROTOCOL'), 'no challenge in the token');
  t.throws(() => make().complete(null), HF('HF_SOURCE_PROTOCOL'), 'completing before the challenge');
  t.throws(() => make().sessionKey, HF('HF_SOURCE_PROTOCOL'), 'no session key before the challenge');
  const twice = make();
  twice.respond(NLMP_CHALLENGE);
  t.throws(() => twice.respond(NLMP_CHALLENGE), HF('HF_SOURCE_PROTOCOL'), 'a second challenge');

  const noUnicode = Buffer.from(NLMP_CHALLENGE);
  noUnicode.writeUInt32LE((noUnicode.readUInt32LE(20) & ~1) >>> 0, 20);
  t.throws(() => make().respond(noUnicode), HF('HF_SOURCE_PROTOCOL'), 'a server without Unicode');
  const noEss = Buffer.from(NLMP_CHALLENGE);
  noEss.writeUInt32LE((noEss.readUInt32LE(20) & ~0x00080000) >>> 0, 20);
  t.throws(() => make().respond(noEss), HF('HF_SOURCE_PROTOCOL'), 'a server without extended session security');

  const raw = make();
  const out = raw.respond(NLMP_CHALLENGE);
  t.same(out.subarray(0, 8), Buffer.from('NTLMSSP\0'), 'a raw server gets a raw AUTHENTICATE_MESSAGE');
  t.equal(raw.sessionKey.length, 16);
});

t.test('SPNEGO DER: round trips, the Windows tokens, and malformed input', async (t) => {
  for (const size of [0, 1, 127, 128, 255, 256, 65535, 65536, 70000]) {
    const token = crypto.randomBytes(size);
    const mic = crypto.randomBytes(16);
    const enc = encodeNegTokenResp({ negState: NegState.ACCEPT_INCOMPLETE, supportedMech: NTLMSSP_OID, responseToken: token, mechListMIC: mic });
    const dec = decodeNegTokenResp(enc);
    t.equal(dec.negState, 1);
    t.same(dec.supportedMech, NTLMSSP_OID);
    t.ok(dec.responseToken!.equals(token), `a ${size}-byte responseToken round trips`);
    t.same(dec.mechListMIC, mic);
  }
  t.same(decodeNegTokenResp(encodeNegTokenResp({})), {}, 'an empty NegTokenResp');
  for (const token of [ntlmMessages(CH1).challengeToken, ntlmMessages(CH1).authToken, ntlmMessages(CH1).finalToken]) {
    const dec = decodeNegTokenResp(token);
    t.same(encodeNegTokenResp(dec), token, 'a Windows token re-encodes to the same bytes');
  }

  const good = encodeNegTokenResp({ negState: 1, responseToken: Buffer.alloc(300, 7) });
  let refused = 0;
  for (let n = 0; n < good.length; n++) {
    try {
      decodeNegTokenResp(good.subarray(0, n));
    } catch (err) {
      if ((err as { code?: string }).code !== 'HF_SOURCE_PROTOCOL') throw err;
      refused++;
    }
  }
  t.equal(refused, good.length, 'every truncation of a token is HF_SOURCE_PROTOCOL');
  const malformed: [string, Buffer][] = [
    ['trailing bytes', Buffer.concat([good, Buffer.from([0])])],
    ['indefinite length', hex('a1803000')],
    ['a five-byte length', hex('a1850000000001')],
    ['a NegTokenInit instead', hex('600406022a03')],
    ['fields out of order', hex('a10e300ca2040402aabba0030a0101')],
    ['a repeated field', hex('a10c300aa0030a0101a0030a0101')],
    ['an unknown field', hex('a1073005a4030a0101')],
    ['negState out of range', hex('a1073005a0030a0109')],
    ['negState of the wrong type', hex('a1073005a003020101')],
    ['a responseToken that is not an OCTET STRING', hex('a1083006a20430020000')],
  ];
  for (const [what, token] of malformed) t.throws(() => decodeNegTokenResp(token), HF('HF_SOURCE_PROTOCOL'), what);
});

t.test('NTLM CHALLENGE_MESSAGE: truncated or malformed input is HF_SOURCE_PROTOCOL, never an out-of-bounds read', async (t) => {
  const c = parseChallengeMessage(NLMP_CHALLENGE);
  t.equal(c.flags, 0xe28a8233);
  t.same(c.serverChallenge, hex('0123456789abcdef'));
  t.same(c.avPairs.map((p) => p.id), [AvId.NB_DOMAIN_NAME, AvId.NB_COMPUTER_NAME]);
  t.equal(c.timestamp, null);

  let refused = 0;
  for (let n = 0; n < NLMP_CHALLENGE.length; n++) {
    try {
      parseChallengeMessage(NLMP_CHALLENGE.subarray(0, n));
    } catch (err) {
      if ((err as { code?: string }).code === 'HF_SOURCE_PROTOCOL') refused++;
      else throw err;
    }
  }
  t.equal(refused, NLMP_CHALLENGE.length, 'every truncation is refused with HF_SOURCE_PROTOCOL');
  const a = new NtlmAuthenticator({ user: 'u', password: 'p' });
  a.initialToken();
  t.throws(() => a.respond(encodeNegTokenResp({ negState: 1, responseToken: NLMP_CHALLENGE.subarray(0, 40) })),
    { code: 'HF_SOURCE_PROTOCOL', message: /TargetName \(offset 56, length 12\) runs past the end of the 40-byte message/ },
    'through the authenticator, the message names the field');
  t.throws(() => parseChallengeMessage(NLMP_CHALLENGE.subarray(0, 20)), { code: 'HF_SOURCE_PROTOCOL', message: /20 bytes is truncated/ });

  const edit = (f: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(NLMP_CHALLENGE);
    f(b);
    return b;
  };
  const cases: [string, Buffer, RegExp][] = [
    ['bad signature', edit((b) => { b[0] = 0x4f; }), /NTLMSSP/],
    ['wrong message type', edit((b) => b.writeUInt32LE(3, 8)), /MessageType/],
    ['TargetName past the end', edit((b) => b.writeUInt32LE(0xfffffff0, 16)), /TargetName/],
    ['TargetInfo past the end', edit((b) => b.writeUInt16LE(0x100, 40)), /TargetInfo/],
    ['an AV pair longer than TargetInfo', edit((b) => b.writeUInt16LE(0x40, 0x44 + 2)), /AV_PAIR/],
    ['no MsvAvEOL', edit((b) => { b.writeUInt16LE(0x20, 40); }), /MsvAvEOL/],
    ['MsvAvEOL with a length', edit((b) => b.writeUInt16LE(4, 0x44 + 0x20 + 2)), /./],
  ];
  for (const [what, msg, message] of cases) t.throws(() => parseChallengeMessage(msg), { code: 'HF_SOURCE_PROTOCOL', message }, what);
  const badTimestamp = Buffer.concat([NLMP_CHALLENGE.subarray(0, 0x44 + 0x20), hex('07000400 00000000 00000000')]);
  badTimestamp.writeUInt16LE(0x2c, 40);
  t.throws(() => parseChallengeMessage(badTimestamp), { code: 'HF_SOURCE_PROTOCOL', message: /MsvAvTimestamp/ }, 'a 4-byte timestamp');

  // Random corruption of a real challenge: either accepted or refused with the coded error.
  const windows = ntlmMessages(CH1).challenge;
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.from(windows);
    for (let k = 0; k < 3; k++) b[crypto.randomInt(b.length)] = crypto.randomInt(256);
    const auth = new NtlmAuthenticator({ user: 'u', password: 'p' });
    auth.initialToken();
    try {
      auth.respond(b);
    } catch (err) {
      if ((err as { code?: string }).code !== 'HF_SOURCE_PROTOCOL') {
        t.fail(`corrupted challenge ${b.toString('hex')} threw ${String(err)}`);
        return;
      }
    }
  }
  t.pass('2000 corrupted challenges: no error other than HF_SOURCE_PROTOCOL');
});
