/*
 * FastCDC with normalized chunking (level 2) and a keyed gear table.
 *
 * The cut decision for a candidate chunk of length L is a pure function of
 * L and the 64 bytes ending at the candidate cut:
 *
 *   h = sum_{j=0..63} gear[b[cut-1-j]] << j        (mod 2^64)
 *   L <  min              : never cut
 *   min <= L < avg        : cut if (h & mask_s) == 0    (avg_bits + 2 top bits)
 *   avg <= L < max        : cut if (h & mask_l) == 0    (avg_bits - 2 top bits)
 *   L == max              : cut
 *
 * The first (min - 64) bytes of every chunk are skipped without hashing; the
 * hash is then warmed over 63 bytes before the first check. Because the
 * decision depends only on the window and L, feeding a stream in any split
 * yields identical boundaries. docs/DESIGN.md, "Chunker", is the spec; the
 * TypeScript reference (native/reference-chunker.ts) implements the same.
 *
 * No globals: all state lives in the caller-owned struct.
 */
#ifndef HF_FASTCDC_H
#define HF_FASTCDC_H

#include <stddef.h>
#include <stdint.h>

#define HF_CDC_WINDOW 64u
#define HF_CDC_MIN_LIMIT 64u
#define HF_CDC_MAX_LIMIT (64u << 20)

typedef struct hf_cdc {
  uint64_t gear[256];
  uint64_t mask_s;
  uint64_t mask_l;
  uint32_t min_size;
  uint32_t avg_size;
  uint32_t max_size;
  /* stream state */
  uint64_t h;
  uint32_t len; /* bytes of the current chunk consumed so far */
} hf_cdc;

/* Returns 0, or -1 when the sizes are invalid:
 * 64 <= min < avg < max <= 64 MiB, avg a power of two >= 2^8. */
int hf_cdc_init(hf_cdc *c, const uint8_t gear_le[2048], uint32_t min_size,
                uint32_t avg_size, uint32_t max_size);

void hf_cdc_reset(hf_cdc *c);

/* Consumes bytes from data[0..n) up to and including the next cut point.
 * Returns the number of bytes consumed; sets *cut to 1 when the current chunk
 * ends at the last consumed byte (state is then reset for the next chunk). */
size_t hf_cdc_next(hf_cdc *c, const uint8_t *data, size_t n, int *cut);

#endif
