#include "fastcdc.h"

#include <string.h>

#if defined(__GNUC__)
#define HF_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define HF_OPAQUE(v) __asm__("" : "+r"(v))
#else
#define HF_UNLIKELY(x) (x)
#define HF_OPAQUE(v) ((void)0)
#endif

static uint64_t top_bits(unsigned bits) { return ~UINT64_C(0) << (64u - bits); }

int hf_cdc_init(hf_cdc *c, const uint8_t gear_le[2048], uint32_t min_size,
                uint32_t avg_size, uint32_t max_size) {
  unsigned bits = 0;
  if (min_size < HF_CDC_MIN_LIMIT || !(min_size < avg_size) ||
      !(avg_size < max_size) || max_size > HF_CDC_MAX_LIMIT)
    return -1;
  if ((avg_size & (avg_size - 1)) != 0 || avg_size < 256) return -1;
  while ((UINT32_C(1) << bits) < avg_size) bits++;
  for (unsigned i = 0; i < 256; i++) {
    uint64_t v = 0;
    for (unsigned b = 0; b < 8; b++) v |= (uint64_t)gear_le[i * 8 + b] << (8 * b);
    c->gear[i] = v;
  }
  c->mask_s = top_bits(bits + 2);
  c->mask_l = top_bits(bits - 2);
  c->min_size = min_size;
  c->avg_size = avg_size;
  c->max_size = max_size;
  hf_cdc_reset(c);
  return 0;
}

void hf_cdc_reset(hf_cdc *c) {
  c->h = 0;
  c->len = 0;
}

/* Hash n bytes without checking. */
static uint64_t warm(const uint64_t *g, uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h << 1) + g[p[i]];
  return h;
}

/* Hash and check n bytes against mask. Returns k in [1, n] when the byte at
 * p[k-1] ends a chunk, else 0. *hp is updated to the hash after the last
 * byte hashed.
 *
 * Four bytes per step: h4 = (h << 4) + t4, where t4 combines the four gear
 * values off the dependency chain, so the chain costs one shift and one add
 * per four bytes; the three intermediate hashes are computed beside it. The
 * empty asm keeps the compiler from re-associating t4 back into the chain
 * (measured: 3.48 GB/s vs 3.13 GB/s without it, 2.04 GB/s byte at a time,
 * on the 2.45 GHz EPYC this project is benchmarked on). */
static size_t scan(const uint64_t *g, uint64_t *hp, const uint8_t *p, size_t n,
                   uint64_t mask) {
  uint64_t h = *hp;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint64_t g0 = g[p[i]], g1 = g[p[i + 1]], g2 = g[p[i + 2]], g3 = g[p[i + 3]];
    const uint64_t t2 = (g0 << 1) + g1;
    const uint64_t t3 = (t2 << 1) + g2;
    uint64_t t4 = (t3 << 1) + g3;
    HF_OPAQUE(t4);
    const uint64_t h1 = (h << 1) + g0;
    const uint64_t h2 = (h << 2) + t2;
    const uint64_t h3 = (h << 3) + t3;
    const uint64_t h4 = (h << 4) + t4;
    if (HF_UNLIKELY(!(h1 & mask))) { *hp = h1; return i + 1; }
    if (HF_UNLIKELY(!(h2 & mask))) { *hp = h2; return i + 2; }
    if (HF_UNLIKELY(!(h3 & mask))) { *hp = h3; return i + 3; }
    if (HF_UNLIKELY(!(h4 & mask))) { *hp = h4; return i + 4; }
    h = h4;
  }
  for (; i < n; i++) {
    h = (h << 1) + g[p[i]];
    if (!(h & mask)) { *hp = h; return i + 1; }
  }
  *hp = h;
  return 0;
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

size_t hf_cdc_next(hf_cdc *c, const uint8_t *data, size_t n, int *cut) {
  const uint32_t warm_at = c->min_size - HF_CDC_WINDOW;
  size_t i = 0;
  size_t k;
  *cut = 0;

  /* Skip: bytes [0, min-64) of a chunk never influence a cut. */
  if (c->len < warm_at) {
    size_t skip = warm_at - c->len;
    if (skip >= n) {
      c->len += (uint32_t)n;
      return n;
    }
    i = skip;
    c->len = warm_at;
  }
  /* Warm: chunk offsets [min-64, min-1) are hashed, not checked. */
  if (c->len < c->min_size - 1) {
    size_t w = min_sz(n - i, (size_t)(c->min_size - 1 - c->len));
    c->h = warm(c->gear, c->h, data + i, w);
    i += w;
    c->len += (uint32_t)w;
    if (i == n) return n;
  }
  /* Lengths [min, avg): the harder mask. The byte at offset len makes length len+1. */
  if (c->len < c->avg_size - 1) {
    size_t w = min_sz(n - i, (size_t)(c->avg_size - 1 - c->len));
    k = scan(c->gear, &c->h, data + i, w, c->mask_s);
    if (k) goto found;
    i += w;
    c->len += (uint32_t)w;
    if (i == n) return n;
  }
  /* Lengths [avg, max): the easier mask. */
  if (c->len < c->max_size - 1) {
    size_t w = min_sz(n - i, (size_t)(c->max_size - 1 - c->len));
    k = scan(c->gear, &c->h, data + i, w, c->mask_l);
    if (k) goto found;
    i += w;
    c->len += (uint32_t)w;
    if (i == n) return n;
  }
  /* Length max: cut unconditionally. */
  k = 1;
found:
  i += k;
  hf_cdc_reset(c);
  *cut = 1;
  return i;
}
