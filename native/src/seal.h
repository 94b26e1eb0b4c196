/*
 * Sealing: the per-blob work of the repository, done on the threadpool.
 *
 *   sealed = nonce(12) || AES-256-GCM(enc_key, nonce, aad, encoding(1) || payload) || tag(16)
 *
 * encoding 0 = payload is the plaintext, 1 = payload is one zstd frame of it
 * (kept only when it is smaller). Blob ids are HMAC-SHA-256(id_key, plaintext).
 *
 * OpenSSL and zstd are the copies inside the Node runtime (their symbols are
 * exported by the node binary); nothing here implements a primitive.
 * A sealer owns its keys and a pool of worker contexts; it is safe to use
 * from several threadpool threads at once. No globals.
 */
#ifndef HF_SEAL_H
#define HF_SEAL_H

#include <stddef.h>
#include <stdint.h>

#define HF_KEY_LEN 32
#define HF_ID_LEN 32
#define HF_NONCE_LEN 12
#define HF_TAG_LEN 16
#define HF_SEAL_OVERHEAD (HF_NONCE_LEN + 1 + HF_TAG_LEN)

typedef struct hf_err {
  const char *code; /* stable code, e.g. "HF_DECRYPT_FAILED"; NULL when ok */
  char message[192];
} hf_err;

typedef struct hf_sealer hf_sealer;

/* Returns NULL (and fills err) when OpenSSL or zstd cannot be set up. */
hf_sealer *hf_sealer_new(const uint8_t enc_key[HF_KEY_LEN],
                         const uint8_t id_key[HF_KEY_LEN], int zstd_level, hf_err *err);
void hf_sealer_free(hf_sealer *s);

/* HMAC-SHA-256(id_key, data). */
int hf_sealer_id(hf_sealer *s, const uint8_t *data, size_t n, uint8_t out[HF_ID_LEN], hf_err *err);

/* Bytes a sealed object of n plaintext bytes may need (compression included). */
size_t hf_seal_bound(size_t n);

/* Seals plain under aad into out (out_cap >= HF_SEAL_OVERHEAD + n; the bound
 * lets compression be tried). out must not overlap plain. */
int hf_seal(hf_sealer *s, const uint8_t *aad, size_t aad_len, const uint8_t *plain,
            size_t n, int compress, uint8_t *out, size_t out_cap, size_t *out_len, hf_err *err);

/* Opens sealed under aad. With out != NULL the plaintext must be exactly
 * out_len bytes and is written there; otherwise it may be up to max_plain
 * bytes and *alloc is malloc'd (caller frees; NULL when empty). When
 * expect_id is not NULL the plaintext's HMAC must equal it. *all_zero says
 * whether every byte is zero. */
int hf_open(hf_sealer *s, const uint8_t *aad, size_t aad_len, const uint8_t *sealed,
            size_t n, size_t max_plain, const uint8_t *expect_id, uint8_t *out, size_t out_len,
            uint8_t **alloc, size_t *plain_len, int *all_zero, hf_err *err);

/* An incremental HMAC for the chunker: one per chunker instance. */
typedef struct hf_mac hf_mac;
hf_mac *hf_mac_new(const uint8_t key[HF_KEY_LEN], hf_err *err);
void hf_mac_free(hf_mac *m);
int hf_mac_begin(hf_mac *m, hf_err *err);
int hf_mac_update(hf_mac *m, const uint8_t *data, size_t n, hf_err *err);
int hf_mac_end(hf_mac *m, uint8_t out[HF_ID_LEN], hf_err *err);

/* An incremental SHA-256 (pack ids are digests of whole packs, written in pieces). */
typedef struct hf_hasher hf_hasher;
hf_hasher *hf_hasher_new(hf_err *err);
void hf_hasher_free(hf_hasher *h);
int hf_hasher_update(hf_hasher *h, const uint8_t *const *parts, const size_t *lens, size_t count, hf_err *err);
/* Writes the digest and starts over. */
int hf_hasher_final(hf_hasher *h, uint8_t out[32], hf_err *err);
/* The state so far as plain bytes, and a hasher continued from such bytes. */
#define HF_HASHER_STATE_LEN 109
void hf_hasher_export(const hf_hasher *h, uint8_t out[HF_HASHER_STATE_LEN]);
int hf_hasher_import(hf_hasher *h, const uint8_t *in, size_t len, hf_err *err);

/* SHA-256 over the concatenation of parts. */
int hf_sha256(const uint8_t *const *parts, const size_t *lens, size_t count,
              uint8_t out[32], hf_err *err);

void hf_set_err(hf_err *err, const char *code, const char *fmt, ...);

#endif
