#include "seal.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SHA256_CTX (the hasher below) is deprecated API in OpenSSL 3, kept for its plain-data state. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <zstd.h>

/* EVP update calls take int lengths; feed large buffers in pieces. */
#define HF_LARGE_INPUT (256u << 10)
#define HF_EVP_STEP (1u << 30)

void hf_set_err(hf_err *err, const char *code, const char *fmt, ...) {
  va_list ap;
  err->code = code;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
}

/* One worker's reusable contexts. */
typedef struct hf_ctx {
  struct hf_ctx *next;
  ZSTD_CCtx *zc;
  ZSTD_DCtx *zd;
  EVP_CIPHER_CTX *enc;
  EVP_CIPHER_CTX *dec;
  EVP_MAC_CTX *mac;
} hf_ctx;

struct hf_sealer {
  uint8_t enc_key[HF_KEY_LEN];
  int level;
  EVP_MAC_CTX *mac_template; /* keyed; only ever duplicated, under the lock */
  EVP_CIPHER *aes;
  pthread_mutex_t lock;
  hf_ctx *free_list;
};

struct hf_mac {
  EVP_MAC_CTX *ctx;
};

static EVP_MAC_CTX *new_hmac(const uint8_t *key, hf_err *err) {
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
  char digest[] = "SHA256";
  OSSL_PARAM params[2];
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
  params[1] = OSSL_PARAM_construct_end();
  EVP_MAC_free(mac); /* the context keeps its own reference */
  if (!ctx || !EVP_MAC_init(ctx, key, HF_KEY_LEN, params)) {
    EVP_MAC_CTX_free(ctx);
    hf_set_err(err, "HF_CRYPTO_FAILED", "cannot set up HMAC-SHA-256");
    return NULL;
  }
  return ctx;
}

hf_sealer *hf_sealer_new(const uint8_t enc_key[HF_KEY_LEN], const uint8_t id_key[HF_KEY_LEN],
                         int zstd_level, hf_err *err) {
  hf_sealer *s = calloc(1, sizeof *s);
  if (!s) {
    hf_set_err(err, "HF_OUT_OF_MEMORY", "out of memory");
    return NULL;
  }
  pthread_mutex_init(&s->lock, NULL);
  memcpy(s->enc_key, enc_key, HF_KEY_LEN);
  s->level = zstd_level;
  s->mac_template = new_hmac(id_key, err);
  s->aes = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  if (!s->mac_template || !s->aes) {
    if (!err->code) hf_set_err(err, "HF_CRYPTO_FAILED", "AES-256-GCM is not available");
    hf_sealer_free(s);
    return NULL;
  }
  return s;
}

static void ctx_free(hf_ctx *c) {
  ZSTD_freeCCtx(c->zc);
  ZSTD_freeDCtx(c->zd);
  EVP_CIPHER_CTX_free(c->enc);
  EVP_CIPHER_CTX_free(c->dec);
  EVP_MAC_CTX_free(c->mac);
  free(c);
}

void hf_sealer_free(hf_sealer *s) {
  if (!s) return;
  while (s->free_list) {
    hf_ctx *c = s->free_list;
    s->free_list = c->next;
    ctx_free(c);
  }
  EVP_MAC_CTX_free(s->mac_template);
  EVP_CIPHER_free(s->aes);
  OPENSSL_cleanse(s->enc_key, sizeof s->enc_key);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

static hf_ctx *ctx_acquire(hf_sealer *s, hf_err *err) {
  hf_ctx *c;
  pthread_mutex_lock(&s->lock);
  c = s->free_list;
  if (c) {
    s->free_list = c->next;
    pthread_mutex_unlock(&s->lock);
    return c;
  }
  c = calloc(1, sizeof *c);
  if (c) c->mac = EVP_MAC_CTX_dup(s->mac_template);
  pthread_mutex_unlock(&s->lock);
  if (!c) goto oom;
  c->zc = ZSTD_createCCtx();
  c->zd = ZSTD_createDCtx();
  c->enc = EVP_CIPHER_CTX_new();
  c->dec = EVP_CIPHER_CTX_new();
  if (!c->mac || !c->zc || !c->zd || !c->enc || !c->dec) goto fail;
  if (!EVP_EncryptInit_ex2(c->enc, s->aes, s->enc_key, NULL, NULL) ||
      !EVP_DecryptInit_ex2(c->dec, s->aes, s->enc_key, NULL, NULL))
    goto fail;
  return c;
fail:
  ctx_free(c);
oom:
  hf_set_err(err, "HF_OUT_OF_MEMORY", "cannot allocate sealing contexts");
  return NULL;
}

static void ctx_release(hf_sealer *s, hf_ctx *c) {
  pthread_mutex_lock(&s->lock);
  c->next = s->free_list;
  s->free_list = c;
  pthread_mutex_unlock(&s->lock);
}

static int mac_run(EVP_MAC_CTX *mac, const uint8_t *data, size_t n, uint8_t out[HF_ID_LEN]) {
  size_t outl = 0;
  if (!EVP_MAC_init(mac, NULL, 0, NULL)) return 0;
  if (n && !EVP_MAC_update(mac, data, n)) return 0;
  return EVP_MAC_final(mac, out, &outl, HF_ID_LEN) && outl == HF_ID_LEN;
}

int hf_sealer_id(hf_sealer *s, const uint8_t *data, size_t n, uint8_t out[HF_ID_LEN],
                 hf_err *err) {
  hf_ctx *c = ctx_acquire(s, err);
  int ok;
  if (!c) return -1;
  ok = mac_run(c->mac, data, n, out);
  ctx_release(s, c);
  if (!ok) {
    hf_set_err(err, "HF_CRYPTO_FAILED", "HMAC-SHA-256 failed");
    return -1;
  }
  return 0;
}

static int gcm_update(EVP_CIPHER_CTX *x, int enc, uint8_t *out, const uint8_t *in, size_t n) {
  while (n) {
    int step = n > HF_EVP_STEP ? (int)HF_EVP_STEP : (int)n;
    int outl = 0;
    int ok = enc ? EVP_EncryptUpdate(x, out, &outl, in, step)
                 : EVP_DecryptUpdate(x, out, &outl, in, step);
    if (!ok || outl != step) return 0;
    if (out) out += step;
    in += step;
    n -= (size_t)step;
  }
  return 1;
}

size_t hf_seal_bound(size_t n) {
  size_t z = ZSTD_compressBound(n);
  return HF_SEAL_OVERHEAD + (z > n ? z : n);
}

int hf_seal(hf_sealer *s, const uint8_t *aad, size_t aad_len, const uint8_t *plain, size_t n,
            int compress, uint8_t *out, size_t out_cap, size_t *out_len, hf_err *err) {
  hf_ctx *c;
  size_t payload_len = n;
  uint8_t encoding = 0;
  uint8_t *payload = out + HF_NONCE_LEN + 1;
  int outl = 0;
  if (out_cap < HF_SEAL_OVERHEAD + n) {
    hf_set_err(err, "HF_INVALID_ARGUMENT", "output buffer of %zu bytes is too small", out_cap);
    return -1;
  }
  c = ctx_acquire(s, err);
  if (!c) return -1;
  /* Compressed straight into the output, then encrypted in place. */
  if (compress && n >= 64) {
    size_t z;
    if (n >= HF_LARGE_INPUT) {
      /* zstd sizes its match tables for long inputs (level 3: 2^17 and 2^16
       * entries); for chunks of at most a few MiB, tables a quarter of that
       * size stay in L2. Measured on a /usr sample of 1 MiB chunks: 25%
       * faster for 0.9% larger output. Smaller inputs already get small
       * tables from zstd itself. */
      ZSTD_CCtx_reset(c->zc, ZSTD_reset_session_and_parameters);
      ZSTD_CCtx_setParameter(c->zc, ZSTD_c_compressionLevel, s->level);
      ZSTD_CCtx_setParameter(c->zc, ZSTD_c_hashLog, 16);
      ZSTD_CCtx_setParameter(c->zc, ZSTD_c_chainLog, 15);
      z = ZSTD_compress2(c->zc, payload, out_cap - HF_SEAL_OVERHEAD, plain, n);
    } else {
      z = ZSTD_compressCCtx(c->zc, payload, out_cap - HF_SEAL_OVERHEAD, plain, n, s->level);
    }
    /* Keep the frame only when it saves at least 1/32 of the blob. */
    if (!ZSTD_isError(z) && z < n - n / 32) {
      payload_len = z;
      encoding = 1;
    }
  }
  if (encoding == 0 && n) memcpy(payload, plain, n);
  if (RAND_bytes(out, HF_NONCE_LEN) != 1 ||
      !EVP_EncryptInit_ex2(c->enc, NULL, NULL, out, NULL) ||
      (aad_len && !gcm_update(c->enc, 1, NULL, aad, aad_len)) ||
      !gcm_update(c->enc, 1, out + HF_NONCE_LEN, &encoding, 1) ||
      (payload_len && !gcm_update(c->enc, 1, payload, payload, payload_len)) ||
      !EVP_EncryptFinal_ex(c->enc, payload + payload_len, &outl) ||
      !EVP_CIPHER_CTX_ctrl(c->enc, EVP_CTRL_GCM_GET_TAG, HF_TAG_LEN, payload + payload_len)) {
    ctx_release(s, c);
    hf_set_err(err, "HF_CRYPTO_FAILED", "AES-256-GCM encryption failed");
    return -1;
  }
  ctx_release(s, c);
  *out_len = HF_SEAL_OVERHEAD + payload_len;
  return 0;
}

static int is_all_zero(const uint8_t *p, size_t n) {
  return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

int hf_open(hf_sealer *s, const uint8_t *aad, size_t aad_len, const uint8_t *sealed, size_t n,
            size_t max_plain, const uint8_t *expect_id, uint8_t *out, size_t out_len,
            uint8_t **alloc, size_t *plain_len, int *all_zero, hf_err *err) {
  hf_ctx *c;
  size_t payload_len;
  uint8_t *frame = NULL, *mem = NULL, *result = NULL;
  size_t result_len = 0;
  uint8_t tag[HF_TAG_LEN];
  uint8_t encoding = 0xff;
  int outl = 0;
  if (n < HF_SEAL_OVERHEAD) {
    hf_set_err(err, "HF_DECRYPT_FAILED", "sealed object is %zu bytes, shorter than its envelope", n);
    return -1;
  }
  if (out) max_plain = out_len;
  c = ctx_acquire(s, err);
  if (!c) return -1;
  payload_len = n - HF_SEAL_OVERHEAD;
  memcpy(tag, sealed + n - HF_TAG_LEN, HF_TAG_LEN);
  if (!EVP_DecryptInit_ex2(c->dec, NULL, NULL, sealed, NULL) ||
      (aad_len && !gcm_update(c->dec, 0, NULL, aad, aad_len)) ||
      !gcm_update(c->dec, 0, &encoding, sealed + HF_NONCE_LEN, 1))
    goto auth;
  /* A raw payload is decrypted straight into its destination; a zstd frame
   * into a temporary buffer. Nothing is used before the tag is verified. */
  if (encoding == 0) {
    if (payload_len > max_plain || (out && payload_len != out_len)) goto wrong_size;
    result_len = payload_len;
    if (out) result = out;
    else if (payload_len) {
      result = mem = malloc(payload_len);
      if (!mem) goto oom;
    }
    if (payload_len && !gcm_update(c->dec, 0, result, sealed + HF_NONCE_LEN + 1, payload_len)) goto auth;
  } else {
    frame = malloc(payload_len ? payload_len : 1);
    if (!frame) goto oom;
    if (payload_len && !gcm_update(c->dec, 0, frame, sealed + HF_NONCE_LEN + 1, payload_len)) goto auth;
  }
  if (!EVP_CIPHER_CTX_ctrl(c->dec, EVP_CTRL_GCM_SET_TAG, HF_TAG_LEN, tag) ||
      EVP_DecryptFinal_ex(c->dec, tag, &outl) <= 0)
    goto auth;
  /* Authenticated from here on. */
  if (encoding == 1) {
    unsigned long long size = ZSTD_getFrameContentSize(frame, payload_len);
    if (size == ZSTD_CONTENTSIZE_UNKNOWN || size == ZSTD_CONTENTSIZE_ERROR) {
      hf_set_err(err, "HF_DECOMPRESS_FAILED", "zstd frame without a valid content size");
      goto fail;
    }
    if (size > max_plain || (out && size != out_len)) goto wrong_size;
    result_len = (size_t)size;
    if (out) result = out;
    else if (result_len) {
      result = mem = malloc(result_len);
      if (!mem) goto oom;
    }
    size_t z = ZSTD_decompressDCtx(c->zd, result, result_len, frame, payload_len);
    if (ZSTD_isError(z) || z != result_len) {
      hf_set_err(err, "HF_DECOMPRESS_FAILED", "zstd: %s",
                 ZSTD_isError(z) ? ZSTD_getErrorName(z) : "short frame");
      goto fail;
    }
  } else if (encoding != 0) {
    hf_set_err(err, "HF_DECOMPRESS_FAILED", "unknown encoding %u", encoding);
    goto fail;
  }
  if (expect_id) {
    uint8_t id[HF_ID_LEN];
    if (!mac_run(c->mac, result, result_len, id)) {
      hf_set_err(err, "HF_CRYPTO_FAILED", "HMAC-SHA-256 failed");
      goto fail;
    }
    if (CRYPTO_memcmp(id, expect_id, HF_ID_LEN) != 0) {
      hf_set_err(err, "HF_BLOB_ID_MISMATCH", "content does not match its id");
      goto fail;
    }
  }
  free(frame);
  ctx_release(s, c);
  if (alloc) *alloc = mem;
  *plain_len = result_len;
  *all_zero = is_all_zero(result, result_len);
  return 0;
auth:
  hf_set_err(err, "HF_DECRYPT_FAILED", "authentication failed: the data was altered or belongs elsewhere");
  goto fail;
wrong_size:
  hf_set_err(err, "HF_DECOMPRESS_FAILED", out ? "plaintext is not the %zu bytes expected" : "plaintext larger than the %zu bytes allowed",
             max_plain);
  goto fail;
oom:
  hf_set_err(err, "HF_OUT_OF_MEMORY", "out of memory");
fail:
  free(frame);
  free(mem);
  ctx_release(s, c);
  return -1;
}

hf_mac *hf_mac_new(const uint8_t key[HF_KEY_LEN], hf_err *err) {
  hf_mac *m = calloc(1, sizeof *m);
  if (!m) {
    hf_set_err(err, "HF_OUT_OF_MEMORY", "out of memory");
    return NULL;
  }
  m->ctx = new_hmac(key, err);
  if (!m->ctx) {
    free(m);
    return NULL;
  }
  return m;
}

void hf_mac_free(hf_mac *m) {
  if (!m) return;
  EVP_MAC_CTX_free(m->ctx);
  free(m);
}

int hf_mac_begin(hf_mac *m, hf_err *err) {
  if (EVP_MAC_init(m->ctx, NULL, 0, NULL)) return 0;
  hf_set_err(err, "HF_CRYPTO_FAILED", "HMAC-SHA-256 init failed");
  return -1;
}

int hf_mac_update(hf_mac *m, const uint8_t *data, size_t n, hf_err *err) {
  if (n == 0 || EVP_MAC_update(m->ctx, data, n)) return 0;
  hf_set_err(err, "HF_CRYPTO_FAILED", "HMAC-SHA-256 update failed");
  return -1;
}

int hf_mac_end(hf_mac *m, uint8_t out[HF_ID_LEN], hf_err *err) {
  size_t outl = 0;
  if (EVP_MAC_final(m->ctx, out, &outl, HF_ID_LEN) && outl == HF_ID_LEN) return 0;
  hf_set_err(err, "HF_CRYPTO_FAILED", "HMAC-SHA-256 final failed");
  return -1;
}

/*
 * The incremental hasher runs on OpenSSL's SHA256_CTX (the same assembly as
 * EVP, SHA-NI where the CPU has it) because its state is plain data: it can
 * be written out at any point and continued in another process, which is
 * how an S3 multipart upload interrupted on one store front-end is verified
 * by the next without reading its parts back (S3 cannot read them).
 */
struct hf_hasher {
  SHA256_CTX ctx;
};

hf_hasher *hf_hasher_new(hf_err *err) {
  hf_hasher *h = calloc(1, sizeof *h);
  if (!h || !SHA256_Init(&h->ctx)) {
    free(h);
    hf_set_err(err, "HF_CRYPTO_FAILED", "cannot set up SHA-256");
    return NULL;
  }
  return h;
}

void hf_hasher_free(hf_hasher *h) {
  if (!h) return;
  OPENSSL_cleanse(h, sizeof *h);
  free(h);
}

int hf_hasher_update(hf_hasher *h, const uint8_t *const *parts, const size_t *lens, size_t count, hf_err *err) {
  for (size_t i = 0; i < count; i++) {
    if (lens[i] && !SHA256_Update(&h->ctx, parts[i], lens[i])) {
      hf_set_err(err, "HF_CRYPTO_FAILED", "SHA-256 update failed");
      return -1;
    }
  }
  return 0;
}

int hf_hasher_final(hf_hasher *h, uint8_t out[32], hf_err *err) {
  if (!SHA256_Final(out, &h->ctx) || !SHA256_Init(&h->ctx)) {
    hf_set_err(err, "HF_CRYPTO_FAILED", "SHA-256 final failed");
    return -1;
  }
  return 0;
}

static void put_u32le(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32le(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Layout: version 1, then h[8], Nl, Nh, data[16], num as little-endian u32. */
void hf_hasher_export(const hf_hasher *h, uint8_t out[HF_HASHER_STATE_LEN]) {
  uint8_t *p = out;
  *p++ = 1;
  for (int i = 0; i < 8; i++, p += 4) put_u32le(p, h->ctx.h[i]);
  put_u32le(p, h->ctx.Nl), p += 4;
  put_u32le(p, h->ctx.Nh), p += 4;
  for (int i = 0; i < SHA_LBLOCK; i++, p += 4) put_u32le(p, h->ctx.data[i]);
  put_u32le(p, h->ctx.num);
}

int hf_hasher_import(hf_hasher *h, const uint8_t *in, size_t len, hf_err *err) {
  SHA256_CTX c;
  const uint8_t *p = in;
  if (len != HF_HASHER_STATE_LEN || in[0] != 1) {
    hf_set_err(err, "HF_INVALID_ARGUMENT", "not a SHA-256 state (%zu bytes)", len);
    return -1;
  }
  if (!SHA256_Init(&c)) {
    hf_set_err(err, "HF_CRYPTO_FAILED", "cannot set up SHA-256");
    return -1;
  }
  p++;
  for (int i = 0; i < 8; i++, p += 4) c.h[i] = get_u32le(p);
  c.Nl = get_u32le(p), p += 4;
  c.Nh = get_u32le(p), p += 4;
  for (int i = 0; i < SHA_LBLOCK; i++, p += 4) c.data[i] = get_u32le(p);
  c.num = get_u32le(p);
  /* bytes buffered = bit count mod 512 / 8: anything else is not a state this code wrote */
  if (c.num >= SHA256_CBLOCK || c.num != ((c.Nl >> 3) & (SHA256_CBLOCK - 1))) {
    hf_set_err(err, "HF_INVALID_ARGUMENT", "a SHA-256 state that does not add up");
    return -1;
  }
  h->ctx = c;
  return 0;
}

int hf_sha256(const uint8_t *const *parts, const size_t *lens, size_t count, uint8_t out[32],
              hf_err *err) {
  EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned int outl = 0;
  int ok = md && ctx && EVP_DigestInit_ex2(ctx, md, NULL);
  for (size_t i = 0; ok && i < count; i++)
    if (lens[i]) ok = EVP_DigestUpdate(ctx, parts[i], lens[i]);
  ok = ok && EVP_DigestFinal_ex(ctx, out, &outl) && outl == 32;
  EVP_MD_CTX_free(ctx);
  EVP_MD_free(md);
  if (ok) return 0;
  hf_set_err(err, "HF_CRYPTO_FAILED", "SHA-256 failed");
  return -1;
}
