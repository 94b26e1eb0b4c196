/*
 * The N-API layer: argument checks, async jobs, and nothing else.
 * Every exported function that does work returns a promise and runs on the
 * libuv threadpool; execute callbacks never touch N-API. Every N-API status
 * is checked. Inputs are caller-provided buffers, referenced for the job's
 * lifetime; outputs are handed over without copying where Node allows it.
 */
#define NAPI_VERSION 9
#define _GNU_SOURCE
#include <node_api.h>

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <zstd.h>

#include "fastcdc.h"
#include "posix.h"
#include "seal.h"

/* ---------- errors ---------- */

static napi_value failed(napi_env env, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) {
    char msg[256];
    snprintf(msg, sizeof msg, "N-API call failed: %s", what);
    napi_throw_error(env, "HF_NATIVE_ERROR", msg);
  }
  return NULL;
}

#define CALL(env, x)                           \
  do {                                         \
    if ((x) != napi_ok) return failed(env, #x); \
  } while (0)

static napi_value invalid(napi_env env, const char *msg) {
  napi_throw_type_error(env, "HF_INVALID_ARGUMENT", msg);
  return NULL;
}

static napi_value make_error(napi_env env, const char *code, const char *message) {
  napi_value c, m, e;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &m) != napi_ok ||
      napi_create_error(env, c, m, &e) != napi_ok)
    return NULL;
  return e;
}

/* ---------- arguments ---------- */

static napi_value get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  napi_value self;
  CALL(env, napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  if (argc < want) return invalid(env, "missing arguments");
  return self;
}

static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is_ta = false;
  napi_typedarray_type type;
  size_t n = 0, off = 0;
  void *p = NULL;
  napi_value ab;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return 0;
  if (napi_get_typedarray_info(env, v, &type, &n, &p, &ab, &off) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = p;
  *len = n;
  return 1;
}

static int is_nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && (t == napi_null || t == napi_undefined);
}

static int get_u32(napi_env env, napi_value v, uint32_t *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return 0;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) return 0;
  *out = (uint32_t)d;
  return 1;
}

/* Non-negative integers up to 2^53, or negative ones for times. */
static int get_i64(napi_env env, napi_value v, int64_t *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return 0;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || d != (double)(int64_t)d) return 0;
  *out = (int64_t)d;
  return 1;
}

static int get_bool(napi_env env, napi_value v, bool *out) {
  return napi_get_value_bool(env, v, out) == napi_ok;
}

/* A NUL-terminated copy of a path given as bytes; NULL when it holds a NUL. */
/* NUL-separated paths (each non-empty, the last NUL-terminated): their bytes and count. */
static int get_paths(napi_env env, napi_value v, uint8_t **paths, size_t *len, size_t *count) {
  size_t n = 0;
  if (!get_bytes(env, v, paths, len) || *len == 0 || (*paths)[*len - 1] != 0) return 0;
  for (size_t i = 0; i < *len; i++) {
    if ((*paths)[i] != 0) continue;
    if (i == 0 || (*paths)[i - 1] == 0) return 0;
    n++;
  }
  *count = n;
  return 1;
}

static char *dup_path(const uint8_t *p, size_t n) {
  if (n == 0 || memchr(p, 0, n)) return NULL;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

/* ---------- results ---------- */

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void free_cb(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

/* Hands malloc'd memory to JS (ownership moves, no copy); copies when this
 * runtime does not allow external buffers. The memory is freed on failure. */
static napi_value hand_over(napi_env env, uint8_t *mem, size_t len) {
  napi_value out;
  void *dst;
  napi_status st;
  if (len == 0) {
    free(mem);
    CALL(env, napi_create_buffer(env, 0, &dst, &out));
    return out;
  }
  st = napi_create_external_buffer(env, len, mem, free_cb, NULL, &out);
  if (st == napi_ok) return out;
  if (st != napi_no_external_buffers_allowed) {
    free(mem);
    return failed(env, "napi_create_external_buffer");
  }
  st = napi_create_buffer_copy(env, len, mem, &dst, &out);
  free(mem);
  if (st != napi_ok) return failed(env, "napi_create_buffer_copy");
  return out;
}

/* ---------- async jobs ---------- */

typedef struct job job;
struct job {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref *refs;
  size_t nrefs;
  void (*exec)(job *);
  napi_value (*done)(napi_env, job *); /* NULL return: reject (err or pending exception) */
  void (*cleanup)(job *);
  hf_err err;
  int sys_errno;
  const char *syscall;
  char *path;
};

static void job_execute(napi_env env, void *data) {
  (void)env;
  job *j = data;
  j->exec(j);
}

static void job_release(napi_env env, job *j) {
  for (size_t i = 0; i < j->nrefs; i++)
    if (j->refs[i]) napi_delete_reference(env, j->refs[i]);
  free(j->refs);
  if (j->work) napi_delete_async_work(env, j->work);
  if (j->cleanup) j->cleanup(j);
  free(j->path);
  free(j);
}

static napi_value errno_error(napi_env env, job *j) {
  char msg[512];
  const char *name = strerrorname_np(j->sys_errno);
  snprintf(msg, sizeof msg, "%s: %s, %s '%s'", name ? name : "EUNKNOWN", strerror(j->sys_errno),
           j->syscall ? j->syscall : "call", j->path ? j->path : "");
  napi_value e = make_error(env, name ? name : "EUNKNOWN", msg);
  napi_value v;
  if (e && napi_create_int32(env, -j->sys_errno, &v) == napi_ok)
    napi_set_named_property(env, e, "errno", v);
  if (e && j->syscall && napi_create_string_utf8(env, j->syscall, NAPI_AUTO_LENGTH, &v) == napi_ok)
    napi_set_named_property(env, e, "syscall", v);
  return e;
}

static void job_complete(napi_env env, napi_status status, void *data) {
  job *j = data;
  napi_value result = NULL, error = NULL;
  if (status != napi_ok) {
    error = make_error(env, "HF_NATIVE_ERROR", "async work was cancelled");
  } else if (j->sys_errno) {
    error = errno_error(env, j);
  } else if (j->err.code) {
    error = make_error(env, j->err.code, j->err.message);
  } else {
    result = j->done ? j->done(env, j) : NULL;
    if (!j->done) napi_get_undefined(env, &result);
    if (!result) {
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (pending) napi_get_and_clear_last_exception(env, &error);
      else error = make_error(env, "HF_NATIVE_ERROR", "could not build the result");
    }
  }
  if (result) napi_resolve_deferred(env, j->deferred, result);
  else if (error) napi_reject_deferred(env, j->deferred, error);
  job_release(env, j);
}

/* Keeps values (buffers, handles) alive until the job completes. */
static int job_hold(napi_env env, job *j, napi_value v) {
  napi_ref *r = realloc(j->refs, (j->nrefs + 1) * sizeof *r);
  if (!r) return 0;
  j->refs = r;
  j->refs[j->nrefs] = NULL;
  if (napi_create_reference(env, v, 1, &j->refs[j->nrefs]) != napi_ok) return 0;
  j->nrefs++;
  return 1;
}

static napi_value job_start(napi_env env, job *j, const char *name) {
  napi_value promise, res_name;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &res_name) != napi_ok ||
      napi_create_async_work(env, NULL, res_name, job_execute, job_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    /* Nothing was queued: the promise (if made) is dropped unsettled. */
    job_release(env, j);
    return failed(env, "cannot start async work");
  }
  return promise;
}

#define NEW_JOB(type, var)                                       \
  type *var = calloc(1, sizeof(type));                           \
  if (!var) {                                                    \
    napi_throw_error(env, "HF_OUT_OF_MEMORY", "out of memory"); \
    return NULL;                                                 \
  }

#define HOLD(env, j, v)                                 \
  do {                                                  \
    if (!job_hold(env, &(j)->base, v)) {                \
      job_release(env, &(j)->base);                     \
      return failed(env, "cannot reference argument"); \
    }                                                   \
  } while (0)

/* ---------- chunker ---------- */

typedef struct chunker {
  hf_cdc cdc;
  hf_mac *mac; /* NULL: boundaries only */
  uint32_t chunk_len;
  int mac_started;
  int busy;
} chunker;

static void chunker_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  chunker *c = data;
  hf_mac_free(c->mac);
  free(c);
}

static chunker *get_chunker(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

/* createChunker(gear: Uint8Array(2048), min, avg, max, idKey: Uint8Array(32) | null) */
static napi_value create_chunker(napi_env env, napi_callback_info info) {
  napi_value argv[5], out;
  uint8_t *gear, *key = NULL;
  size_t gear_len, key_len = 0;
  uint32_t mn, av, mx;
  hf_err err = {0};
  if (!get_args(env, info, 5, argv)) return NULL;
  if (!get_bytes(env, argv[0], &gear, &gear_len) || gear_len != 2048)
    return invalid(env, "gear table must be 2048 bytes");
  if (!get_u32(env, argv[1], &mn) || !get_u32(env, argv[2], &av) || !get_u32(env, argv[3], &mx))
    return invalid(env, "chunk sizes must be integers");
  if (!is_nullish(env, argv[4]) && (!get_bytes(env, argv[4], &key, &key_len) || key_len != HF_KEY_LEN))
    return invalid(env, "id key must be 32 bytes or null");
  chunker *c = calloc(1, sizeof *c);
  if (!c) return invalid(env, "out of memory");
  if (hf_cdc_init(&c->cdc, gear, mn, av, mx) != 0) {
    free(c);
    return invalid(env, "chunk sizes must satisfy 64 <= min < avg < max <= 64 MiB, avg a power of two");
  }
  if (key) {
    c->mac = hf_mac_new(key, &err);
    if (!c->mac) {
      free(c);
      napi_throw_error(env, err.code, err.message);
      return NULL;
    }
  }
  if (napi_create_external(env, c, chunker_finalize, NULL, &out) != napi_ok) {
    chunker_finalize(env, c, NULL);
    return failed(env, "napi_create_external");
  }
  return out;
}

typedef struct chunk_job {
  job base;
  chunker *c;
  const uint8_t *data;
  size_t len;
  bool final;
  uint8_t *results; /* count x (u32 length, 32-byte id) */
  size_t count, cap;
} chunk_job;

#define CHUNK_RECORD 36u
/* Scan and hash in slices that stay in L2, so the HMAC reads warm data. */
#define CHUNK_SLICE (256u << 10)

static int emit_chunk(chunk_job *j) {
  chunker *c = j->c;
  if (j->count == j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 16;
    uint8_t *r = realloc(j->results, cap * CHUNK_RECORD);
    if (!r) {
      hf_set_err(&j->base.err, "HF_OUT_OF_MEMORY", "out of memory");
      return -1;
    }
    j->results = r;
    j->cap = cap;
  }
  uint8_t *rec = j->results + j->count * CHUNK_RECORD;
  for (int i = 0; i < 4; i++) rec[i] = (uint8_t)(c->chunk_len >> (8 * i));
  if (c->mac) {
    if (!c->mac_started && hf_mac_begin(c->mac, &j->base.err)) return -1;
    if (hf_mac_end(c->mac, rec + 4, &j->base.err)) return -1;
  } else {
    memset(rec + 4, 0, HF_ID_LEN);
  }
  c->mac_started = 0;
  c->chunk_len = 0;
  j->count++;
  return 0;
}

static void chunk_exec(job *base) {
  chunk_job *j = (chunk_job *)base;
  chunker *c = j->c;
  const uint8_t *p = j->data;
  size_t n = j->len;
  while (n) {
    int cut = 0;
    size_t slice = n < CHUNK_SLICE ? n : CHUNK_SLICE;
    size_t k = hf_cdc_next(&c->cdc, p, slice, &cut);
    if (c->mac) {
      if (!c->mac_started) {
        if (hf_mac_begin(c->mac, &base->err)) return;
        c->mac_started = 1;
      }
      if (hf_mac_update(c->mac, p, k, &base->err)) return;
    }
    c->chunk_len += (uint32_t)k;
    p += k;
    n -= k;
    if (cut && emit_chunk(j)) return;
  }
  if (j->final) {
    if (c->chunk_len && emit_chunk(j)) return;
    hf_cdc_reset(&c->cdc);
    c->chunk_len = 0;
    c->mac_started = 0;
  }
}

static napi_value chunk_done(napi_env env, job *base) {
  chunk_job *j = (chunk_job *)base;
  napi_value out;
  void *dst;
  CALL(env, napi_create_buffer_copy(env, j->count * CHUNK_RECORD, j->results ? j->results : (void *)"",
                                    &dst, &out));
  return out;
}

static void chunk_cleanup(job *base) {
  chunk_job *j = (chunk_job *)base;
  j->c->busy = 0;
  free(j->results);
}

/* chunkerUpdate(chunker, data: Uint8Array, final: boolean): Promise<Buffer> */
static napi_value chunker_update(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint8_t *data;
  size_t len;
  bool final;
  if (!get_args(env, info, 3, argv)) return NULL;
  chunker *c = get_chunker(env, argv[0]);
  if (!c) return invalid(env, "not a chunker");
  if (!get_bytes(env, argv[1], &data, &len)) return invalid(env, "data must be a Uint8Array");
  if (!get_bool(env, argv[2], &final)) return invalid(env, "final must be a boolean");
  if (c->busy) {
    napi_throw_error(env, "HF_CHUNKER_BUSY", "chunker is already working on a buffer; await it first");
    return NULL;
  }
  NEW_JOB(chunk_job, j);
  j->base.exec = chunk_exec;
  j->base.done = chunk_done;
  j->c = c;
  j->data = data;
  j->len = len;
  j->final = final;
  HOLD(env, j, argv[0]);
  HOLD(env, j, argv[1]);
  c->busy = 1;
  j->base.cleanup = chunk_cleanup;
  return job_start(env, &j->base, "holdfast:chunk");
}

/* chunkerReset(chunker): forget a partly fed stream. */
static napi_value chunker_reset(napi_env env, napi_callback_info info) {
  napi_value argv[1], undef;
  if (!get_args(env, info, 1, argv)) return NULL;
  chunker *c = get_chunker(env, argv[0]);
  if (!c) return invalid(env, "not a chunker");
  if (c->busy) {
    napi_throw_error(env, "HF_CHUNKER_BUSY", "chunker is working on a buffer; await it first");
    return NULL;
  }
  hf_cdc_reset(&c->cdc);
  c->chunk_len = 0;
  c->mac_started = 0;
  CALL(env, napi_get_undefined(env, &undef));
  return undef;
}

/* ---------- sealer ---------- */

static void sealer_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  hf_sealer_free(data);
}

static hf_sealer *get_sealer(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

/* createSealer(encKey: Uint8Array(32), idKey: Uint8Array(32), zstdLevel: number) */
static napi_value create_sealer(napi_env env, napi_callback_info info) {
  napi_value argv[3], out;
  uint8_t *ek, *ik;
  size_t ekl, ikl;
  uint32_t level;
  hf_err err = {0};
  if (!get_args(env, info, 3, argv)) return NULL;
  if (!get_bytes(env, argv[0], &ek, &ekl) || ekl != HF_KEY_LEN ||
      !get_bytes(env, argv[1], &ik, &ikl) || ikl != HF_KEY_LEN)
    return invalid(env, "keys must be 32 bytes");
  if (!get_u32(env, argv[2], &level) || level < 1 || level > 19)
    return invalid(env, "zstd level must be 1..19");
  hf_sealer *s = hf_sealer_new(ek, ik, (int)level, &err);
  if (!s) {
    napi_throw_error(env, err.code, err.message);
    return NULL;
  }
  if (napi_create_external(env, s, sealer_finalize, NULL, &out) != napi_ok) {
    hf_sealer_free(s);
    return failed(env, "napi_create_external");
  }
  return out;
}

typedef struct seal_job {
  job base;
  hf_sealer *s;
  const uint8_t *plain;
  size_t plain_len;
  const uint8_t *aad;
  size_t aad_len;
  uint8_t blob_aad[1 + HF_ID_LEN];
  int blob_type; /* >= 0: blob mode (aad = type || id, out = id || sealed) */
  const uint8_t *id;
  bool compress;
  uint8_t *out;
  size_t out_cap;
  size_t out_len;
} seal_job;

static void seal_exec(job *base) {
  seal_job *j = (seal_job *)base;
  size_t front = 0;
  if (j->blob_type >= 0) {
    j->blob_aad[0] = (uint8_t)j->blob_type;
    if (j->id) memcpy(j->blob_aad + 1, j->id, HF_ID_LEN);
    else if (hf_sealer_id(j->s, j->plain, j->plain_len, j->blob_aad + 1, &base->err)) return;
    j->aad = j->blob_aad;
    j->aad_len = sizeof j->blob_aad;
    memcpy(j->out, j->blob_aad + 1, HF_ID_LEN);
    front = HF_ID_LEN;
  }
  if (hf_seal(j->s, j->aad, j->aad_len, j->plain, j->plain_len, j->compress, j->out + front,
              j->out_cap - front, &j->out_len, &base->err))
    return;
  j->out_len += front;
}

static napi_value seal_done(napi_env env, job *base) {
  napi_value out;
  CALL(env, napi_create_double(env, (double)((seal_job *)base)->out_len, &out));
  return out;
}

/* Checks out: at least front + the seal bound for plain, not overlapping it. */
static int seal_output(napi_env env, napi_value v, seal_job *j, size_t front) {
  uint8_t *p;
  size_t n;
  if (!get_bytes(env, v, &p, &n)) return 0;
  if (n < front + hf_seal_bound(j->plain_len)) return 0;
  if (p < j->plain + j->plain_len && j->plain < p + n) return 0;
  j->out = p;
  j->out_cap = n;
  return 1;
}

/* sealBound(n) -> bytes a sealed object of n bytes may take */
static napi_value seal_bound(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  int64_t n;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_i64(env, argv[0], &n) || n < 0) return invalid(env, "sealBound(n): n must be a size");
  CALL(env, napi_create_double(env, (double)hf_seal_bound((size_t)n), &out));
  return out;
}

/* sealBlob(sealer, type: 0..255, plain, compress, id | null, out) -> Promise<number>
 *   writes id(32) || sealed into out (>= 32 + sealBound(plain.length)); the id
 *   is computed when null. Resolves with the bytes written. */
static napi_value seal_blob(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  uint32_t type;
  bool compress;
  uint8_t *id = NULL;
  size_t id_len = 0;
  if (!get_args(env, info, 6, argv)) return NULL;
  hf_sealer *s = get_sealer(env, argv[0]);
  if (!s) return invalid(env, "not a sealer");
  if (!get_u32(env, argv[1], &type) || type > 255) return invalid(env, "type must be 0..255");
  NEW_JOB(seal_job, j);
  j->base.exec = seal_exec;
  j->base.done = seal_done;
  j->s = s;
  j->blob_type = (int)type;
  if (!get_bytes(env, argv[2], (uint8_t **)&j->plain, &j->plain_len) || !get_bool(env, argv[3], &compress) ||
      (!is_nullish(env, argv[4]) && (!get_bytes(env, argv[4], &id, &id_len) || id_len != HF_ID_LEN)) ||
      !seal_output(env, argv[5], j, HF_ID_LEN)) {
    job_release(env, &j->base);
    return invalid(env, "sealBlob(sealer, type, plain, compress, id|null, out >= 32 + sealBound)");
  }
  j->compress = compress;
  j->id = id;
  HOLD(env, j, argv[0]);
  HOLD(env, j, argv[2]);
  if (id) HOLD(env, j, argv[4]);
  HOLD(env, j, argv[5]);
  return job_start(env, &j->base, "holdfast:seal");
}

/* sealData(sealer, aad, plain, compress, out) -> Promise<number> */
static napi_value seal_data(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  bool compress;
  if (!get_args(env, info, 5, argv)) return NULL;
  hf_sealer *s = get_sealer(env, argv[0]);
  if (!s) return invalid(env, "not a sealer");
  NEW_JOB(seal_job, j);
  j->base.exec = seal_exec;
  j->base.done = seal_done;
  j->s = s;
  j->blob_type = -1;
  if (!get_bytes(env, argv[1], (uint8_t **)&j->aad, &j->aad_len) ||
      !get_bytes(env, argv[2], (uint8_t **)&j->plain, &j->plain_len) || !get_bool(env, argv[3], &compress) ||
      !seal_output(env, argv[4], j, 0)) {
    job_release(env, &j->base);
    return invalid(env, "sealData(sealer, aad, plain, compress, out >= sealBound)");
  }
  j->compress = compress;
  HOLD(env, j, argv[0]);
  HOLD(env, j, argv[1]);
  HOLD(env, j, argv[2]);
  HOLD(env, j, argv[4]);
  return job_start(env, &j->base, "holdfast:seal");
}

/* sealBlobs: many blobs of one type in one job. */
typedef struct seal_many_job {
  job base;
  hf_sealer *s;
  int type;
  const uint8_t *plain;
  uint32_t *lens;
  size_t count;
  bool compress;
  uint8_t *out;
  size_t out_cap;
  uint8_t *records; /* per blob: u32 offset in out, u32 sealed length, id(32) */
} seal_many_job;

static void seal_many_exec(job *base) {
  seal_many_job *j = (seal_many_job *)base;
  const uint8_t *p = j->plain;
  size_t pos = 0;
  for (size_t i = 0; i < j->count; i++) {
    uint8_t aad[1 + HF_ID_LEN];
    uint8_t *rec = j->records + i * 40;
    size_t sealed_len = 0;
    aad[0] = (uint8_t)j->type;
    if (hf_sealer_id(j->s, p, j->lens[i], aad + 1, &base->err)) return;
    if (hf_seal(j->s, aad, sizeof aad, p, j->lens[i], j->compress, j->out + pos, j->out_cap - pos, &sealed_len, &base->err))
      return;
    put_u32(rec, (uint32_t)pos);
    put_u32(rec + 4, (uint32_t)sealed_len);
    memcpy(rec + 8, aad + 1, HF_ID_LEN);
    pos += sealed_len;
    p += j->lens[i];
  }
}

static napi_value seal_many_done(napi_env env, job *base) {
  seal_many_job *j = (seal_many_job *)base;
  napi_value out;
  void *dst;
  CALL(env, napi_create_buffer_copy(env, j->count * 40, j->records, &dst, &out));
  return out;
}

static void seal_many_cleanup(job *base) {
  seal_many_job *j = (seal_many_job *)base;
  free(j->lens);
  free(j->records);
}

/* sealBlobs(sealer, type, plain, lens: number[], compress, out) -> Promise<Buffer>
 *   plain holds the blobs back to back; each is sealed (id computed) into out,
 *   back to back; out must hold the sum of sealBound(len). Per blob 40 bytes:
 *   u32 offset in out, u32 sealed length, id(32). */
static napi_value seal_blobs(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  uint32_t type, n = 0;
  bool compress, is_arr = false;
  uint8_t *plain, *out;
  size_t plain_len, out_len;
  if (!get_args(env, info, 6, argv)) return NULL;
  hf_sealer *s = get_sealer(env, argv[0]);
  if (!s) return invalid(env, "not a sealer");
  if (!get_u32(env, argv[1], &type) || type > 255 || !get_bytes(env, argv[2], &plain, &plain_len) ||
      napi_is_array(env, argv[3], &is_arr) != napi_ok || !is_arr || !get_bool(env, argv[4], &compress) ||
      !get_bytes(env, argv[5], &out, &out_len))
    return invalid(env, "sealBlobs(sealer, type, plain, lens, compress, out)");
  CALL(env, napi_get_array_length(env, argv[3], &n));
  if (n == 0) return invalid(env, "sealBlobs: no blobs");
  NEW_JOB(seal_many_job, j);
  j->base.exec = seal_many_exec;
  j->base.done = seal_many_done;
  j->base.cleanup = seal_many_cleanup;
  j->lens = calloc(n, sizeof *j->lens);
  j->records = calloc(n, 40);
  if (!j->lens || !j->records) {
    job_release(env, &j->base);
    return invalid(env, "out of memory");
  }
  size_t total = 0, bound = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    if (napi_get_element(env, argv[3], i, &el) != napi_ok || !get_u32(env, el, &j->lens[i])) {
      job_release(env, &j->base);
      return invalid(env, "sealBlobs: lens must be whole numbers");
    }
    total += j->lens[i];
    bound += hf_seal_bound(j->lens[i]);
  }
  if (total != plain_len || out_len < bound || (out < plain + plain_len && plain < out + out_len)) {
    job_release(env, &j->base);
    return invalid(env, "sealBlobs: lens must add up to plain, out must hold their bounds and not overlap");
  }
  j->s = s;
  j->type = (int)type;
  j->plain = plain;
  j->count = n;
  j->compress = compress;
  j->out = out;
  j->out_cap = out_len;
  HOLD(env, j, argv[0]);
  HOLD(env, j, argv[2]);
  HOLD(env, j, argv[5]);
  return job_start(env, &j->base, "holdfast:sealmany");
}

typedef struct open_job {
  job base;
  hf_sealer *s;
  const uint8_t *aad, *sealed, *expect;
  size_t aad_len, sealed_len;
  size_t max_plain;
  uint8_t *out; /* caller's buffer, or NULL */
  size_t out_len;
  uint8_t *alloc;
  size_t plain_len;
  int all_zero;
} open_job;

static void open_exec(job *base) {
  open_job *j = (open_job *)base;
  hf_open(j->s, j->aad, j->aad_len, j->sealed, j->sealed_len, j->max_plain, j->expect, j->out,
          j->out_len, &j->alloc, &j->plain_len, &j->all_zero, &base->err);
}

static napi_value open_done(napi_env env, job *base) {
  open_job *j = (open_job *)base;
  napi_value arr, buf, zero;
  if (j->out) {
    CALL(env, napi_get_null(env, &buf));
  } else {
    uint8_t *mem = j->alloc;
    j->alloc = NULL;
    buf = hand_over(env, mem, j->plain_len);
    if (!buf) return NULL;
  }
  CALL(env, napi_get_boolean(env, j->all_zero != 0, &zero));
  CALL(env, napi_create_array_with_length(env, 2, &arr));
  CALL(env, napi_set_element(env, arr, 0, buf));
  CALL(env, napi_set_element(env, arr, 1, zero));
  return arr;
}

static void open_cleanup(job *base) { free(((open_job *)base)->alloc); }

/* open(sealer, aad, sealed, maxPlain, expectId | null, out | null)
 *   -> Promise<[Buffer | null, allZero]>: with out, the plaintext must be
 *   exactly out.length bytes and is written there (null is returned). */
static napi_value open_sealed(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int64_t max_plain;
  size_t id_len = 0;
  if (!get_args(env, info, 6, argv)) return NULL;
  hf_sealer *s = get_sealer(env, argv[0]);
  if (!s) return invalid(env, "not a sealer");
  NEW_JOB(open_job, j);
  j->base.exec = open_exec;
  j->base.done = open_done;
  j->base.cleanup = open_cleanup;
  j->s = s;
  if (!get_bytes(env, argv[1], (uint8_t **)&j->aad, &j->aad_len) ||
      !get_bytes(env, argv[2], (uint8_t **)&j->sealed, &j->sealed_len) ||
      !get_i64(env, argv[3], &max_plain) || max_plain < 0 ||
      (!is_nullish(env, argv[4]) &&
       (!get_bytes(env, argv[4], (uint8_t **)&j->expect, &id_len) || id_len != HF_ID_LEN)) ||
      (!is_nullish(env, argv[5]) && !get_bytes(env, argv[5], &j->out, &j->out_len))) {
    job_release(env, &j->base);
    return invalid(env, "open(sealer, aad, sealed, maxPlain, expectId|null, out|null)");
  }
  if (j->out && j->out < j->sealed + j->sealed_len && j->sealed < j->out + j->out_len) {
    job_release(env, &j->base);
    return invalid(env, "open: out must not overlap sealed");
  }
  if (j->out && j->out_len == 0) {
    /* an empty Uint8Array may have no data pointer; still a valid destination */
    static uint8_t none;
    j->out = &none;
  }
  j->max_plain = (size_t)max_plain;
  HOLD(env, j, argv[0]);
  HOLD(env, j, argv[1]);
  HOLD(env, j, argv[2]);
  if (j->expect) HOLD(env, j, argv[4]);
  if (j->out) HOLD(env, j, argv[5]);
  return job_start(env, &j->base, "holdfast:open");
}

/* openBlobs: many sealed blobs of known plaintext sizes in one job. */
typedef struct open_many_job {
  job base;
  hf_sealer *s;
  size_t count;
  const uint8_t **sealed;
  size_t *sealed_lens;
  const uint8_t *aads; /* count x 33: type || id; the id is also checked */
  uint32_t *raw_lens;
  uint8_t *out;
  size_t out_len;
  uint8_t *records; /* per blob: u8 all-zero, u8 status (0 ok, 1 decrypt, 2 decompress, 3 id mismatch, 4 other) */
} open_many_job;

static void open_many_exec(job *base) {
  open_many_job *j = (open_many_job *)base;
  size_t pos = 0;
  for (size_t i = 0; i < j->count; i++) {
    hf_err err = {0};
    size_t len = 0;
    int zero = 0;
    const uint8_t *aad = j->aads + i * (1 + HF_ID_LEN);
    if (hf_open(j->s, aad, 1 + HF_ID_LEN, j->sealed[i], j->sealed_lens[i], j->raw_lens[i], aad + 1,
                j->out + pos, j->raw_lens[i], NULL, &len, &zero, &err) == 0) {
      j->records[i * 2] = (uint8_t)zero;
    } else {
      const char *c = err.code ? err.code : "";
      j->records[i * 2 + 1] = strcmp(c, "HF_DECRYPT_FAILED") == 0 ? 1 : strcmp(c, "HF_DECOMPRESS_FAILED") == 0 ? 2
                            : strcmp(c, "HF_BLOB_ID_MISMATCH") == 0 ? 3 : 4;
    }
    pos += j->raw_lens[i];
  }
}

static napi_value open_many_done(napi_env env, job *base) {
  open_many_job *j = (open_many_job *)base;
  napi_value out;
  void *dst;
  CALL(env, napi_create_buffer_copy(env, j->count * 2, j->records, &dst, &out));
  return out;
}

static void open_many_cleanup(job *base) {
  open_many_job *j = (open_many_job *)base;
  free(j->sealed);
  free(j->sealed_lens);
  free(j->raw_lens);
  free(j->records);
}

/* openBlobs(sealer, sealed: Uint8Array[], aads: Uint8Array (33 bytes each), rawLens: number[], out)
 *   -> Promise<Buffer>: each blob opened (and its HMAC checked against the id
 *   in its AAD) into out, back to back, exactly rawLen bytes each. Per blob
 *   2 bytes: all-zero, status (0 ok; 1 decrypt, 2 decompress, 3 id mismatch,
 *   4 other failure). One failure does not stop the others. */
static napi_value open_blobs(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  bool is_arr = false;
  uint32_t n = 0;
  uint8_t *aads, *out;
  size_t aads_len, out_len;
  if (!get_args(env, info, 5, argv)) return NULL;
  hf_sealer *s = get_sealer(env, argv[0]);
  if (!s) return invalid(env, "not a sealer");
  if (napi_is_array(env, argv[1], &is_arr) != napi_ok || !is_arr || !get_bytes(env, argv[2], &aads, &aads_len) ||
      !get_bytes(env, argv[4], &out, &out_len))
    return invalid(env, "openBlobs(sealer, sealed[], aads, rawLens, out)");
  CALL(env, napi_get_array_length(env, argv[1], &n));
  if (n == 0 || aads_len != (size_t)n * (1 + HF_ID_LEN)) return invalid(env, "openBlobs: one 33-byte AAD per blob");
  NEW_JOB(open_many_job, j);
  j->base.exec = open_many_exec;
  j->base.done = open_many_done;
  j->base.cleanup = open_many_cleanup;
  j->count = n;
  j->sealed = calloc(n, sizeof *j->sealed);
  j->sealed_lens = calloc(n, sizeof *j->sealed_lens);
  j->raw_lens = calloc(n, sizeof *j->raw_lens);
  j->records = calloc(n, 2);
  if (!j->sealed || !j->sealed_lens || !j->raw_lens || !j->records) {
    job_release(env, &j->base);
    return invalid(env, "out of memory");
  }
  size_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value el, len;
    uint8_t *p;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok || !get_bytes(env, el, &p, &j->sealed_lens[i]) ||
        napi_get_element(env, argv[3], i, &len) != napi_ok || !get_u32(env, len, &j->raw_lens[i])) {
      job_release(env, &j->base);
      return invalid(env, "openBlobs: sealed must be Uint8Arrays, rawLens whole numbers");
    }
    j->sealed[i] = p;
    total += j->raw_lens[i];
    HOLD(env, j, el);
  }
  if (out_len < total) {
    job_release(env, &j->base);
    return invalid(env, "openBlobs: out must hold the sum of rawLens");
  }
  j->s = s;
  j->aads = aads;
  j->out = out;
  j->out_len = out_len;
  HOLD(env, j, argv[0]);
  HOLD(env, j, argv[2]);
  HOLD(env, j, argv[4]);
  return job_start(env, &j->base, "holdfast:openmany");
}

/* ---------- sha256 ---------- */

typedef struct hasher {
  hf_hasher *h;
  int busy;
} hasher;

static void hasher_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  hasher *h = data;
  hf_hasher_free(h->h);
  free(h);
}

static hasher *get_hasher(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

typedef struct sha_job {
  job base;
  hasher *hasher; /* NULL: one-shot digest */
  const uint8_t **parts;
  size_t *lens;
  size_t count;
  uint8_t digest[32];
} sha_job;

static void sha_exec(job *base) {
  sha_job *j = (sha_job *)base;
  if (j->hasher) hf_hasher_update(j->hasher->h, j->parts, j->lens, j->count, &base->err);
  else hf_sha256(j->parts, j->lens, j->count, j->digest, &base->err);
}

static napi_value sha_done(napi_env env, job *base) {
  sha_job *j = (sha_job *)base;
  napi_value out;
  void *dst;
  if (j->hasher) {
    CALL(env, napi_get_undefined(env, &out));
    return out;
  }
  CALL(env, napi_create_buffer_copy(env, 32, j->digest, &dst, &out));
  return out;
}

static void sha_cleanup(job *base) {
  sha_job *j = (sha_job *)base;
  if (j->hasher) j->hasher->busy = 0;
  free(j->parts);
  free(j->lens);
}

/* Starts a job over parts: Uint8Array[]; with a hasher (held by handle) it updates it. */
static napi_value start_sha(napi_env env, napi_value parts, hasher *h, napi_value handle) {
  bool is_arr = false;
  uint32_t n = 0;
  if (napi_is_array(env, parts, &is_arr) != napi_ok || !is_arr) return invalid(env, "parts must be an array");
  CALL(env, napi_get_array_length(env, parts, &n));
  NEW_JOB(sha_job, j);
  j->base.exec = sha_exec;
  j->base.done = sha_done;
  j->parts = calloc(n ? n : 1, sizeof *j->parts);
  j->lens = calloc(n ? n : 1, sizeof *j->lens);
  j->count = n;
  if (!j->parts || !j->lens) {
    job_release(env, &j->base);
    return invalid(env, "out of memory");
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    uint8_t *p;
    if (napi_get_element(env, parts, i, &el) != napi_ok || !get_bytes(env, el, &p, &j->lens[i])) {
      job_release(env, &j->base);
      return invalid(env, "parts must be Uint8Arrays");
    }
    j->parts[i] = p;
    HOLD(env, j, el);
  }
  if (h) {
    HOLD(env, j, handle);
    j->hasher = h;
    h->busy = 1;
  }
  j->base.cleanup = sha_cleanup;
  return job_start(env, &j->base, "holdfast:sha256");
}

/* sha256(parts: Uint8Array[]) -> Promise<Buffer(32)> */
static napi_value sha256_parts(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  return start_sha(env, argv[0], NULL, NULL);
}

/* createHasher() -> external */
static napi_value create_hasher(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  hf_err err = {0};
  hasher *h = calloc(1, sizeof *h);
  if (!h) return invalid(env, "out of memory");
  h->h = hf_hasher_new(&err);
  if (!h->h) {
    free(h);
    napi_throw_error(env, err.code, err.message);
    return NULL;
  }
  if (napi_create_external(env, h, hasher_finalize, NULL, &out) != napi_ok) {
    hasher_finalize(env, h, NULL);
    return failed(env, "napi_create_external");
  }
  return out;
}

/* hasherUpdate(hasher, parts: Uint8Array[]) -> Promise<void>; one at a time */
static napi_value hasher_update(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  hasher *h = get_hasher(env, argv[0]);
  if (!h) return invalid(env, "not a hasher");
  if (h->busy) {
    napi_throw_error(env, "HF_HASHER_BUSY", "hasher is already working; await the previous update");
    return NULL;
  }
  return start_sha(env, argv[1], h, argv[0]);
}

/* The hasher in v, when it is one and no update is running; else throws and returns NULL. */
static hasher *idle_hasher(napi_env env, napi_value v) {
  hasher *h = get_hasher(env, v);
  if (!h) {
    invalid(env, "not a hasher");
    return NULL;
  }
  if (h->busy) {
    napi_throw_error(env, "HF_HASHER_BUSY", "hasher is still working; await its update");
    return NULL;
  }
  return h;
}

/* hasherDigest(hasher) -> Buffer(32), and the hasher starts over */
static napi_value hasher_digest(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  uint8_t digest[32];
  void *dst;
  hf_err err = {0};
  if (!get_args(env, info, 1, argv)) return NULL;
  hasher *h = idle_hasher(env, argv[0]);
  if (!h) return NULL;
  if (hf_hasher_final(h->h, digest, &err)) {
    napi_throw_error(env, err.code, err.message);
    return NULL;
  }
  CALL(env, napi_create_buffer_copy(env, 32, digest, &dst, &out));
  return out;
}

/* hasherState(hasher) -> Buffer: the state so far, to continue elsewhere */
static napi_value hasher_state(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  uint8_t state[HF_HASHER_STATE_LEN];
  void *dst;
  if (!get_args(env, info, 1, argv)) return NULL;
  hasher *h = idle_hasher(env, argv[0]);
  if (!h) return NULL;
  hf_hasher_export(h->h, state);
  CALL(env, napi_create_buffer_copy(env, sizeof state, state, &dst, &out));
  return out;
}

/* hasherRestore(hasher, state: Uint8Array): continues from a state hasherState gave */
static napi_value hasher_restore(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  uint8_t *state;
  size_t len;
  hf_err err = {0};
  if (!get_args(env, info, 2, argv)) return NULL;
  hasher *h = idle_hasher(env, argv[0]);
  if (!h) return NULL;
  if (!get_bytes(env, argv[1], &state, &len)) return invalid(env, "state must be a Uint8Array");
  if (hf_hasher_import(h->h, state, len, &err)) {
    napi_throw_error(env, err.code, err.message);
    return NULL;
  }
  CALL(env, napi_get_undefined(env, &out));
  return out;
}

/* ---------- file system ---------- */

typedef struct fs_job {
  job base;
  hf_buf buf;
  hf_meta meta;
  const uint8_t *data;
  size_t data_len;
  uint64_t size;
  int64_t a_sec, a_nsec, m_sec, m_nsec;
  bool nofollow;
  uint32_t mode;
  uint64_t dev;
} fs_job;

static void scandir_exec(job *base) {
  fs_job *j = (fs_job *)base;
  base->sys_errno = hf_scandir(base->path, &j->buf);
}

static napi_value buf_done(napi_env env, job *base) {
  fs_job *j = (fs_job *)base;
  uint8_t *mem = j->buf.data;
  j->buf.data = NULL;
  return hand_over(env, mem, j->buf.len);
}

static void fs_cleanup(job *base) { free(((fs_job *)base)->buf.data); }

static fs_job *new_fs_job(napi_env env, napi_value path, const char *syscall) {
  uint8_t *p;
  size_t n;
  if (!get_bytes(env, path, &p, &n)) {
    invalid(env, "path must be a Uint8Array");
    return NULL;
  }
  fs_job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, "HF_OUT_OF_MEMORY", "out of memory");
    return NULL;
  }
  j->base.path = dup_path(p, n);
  if (!j->base.path) {
    free(j);
    invalid(env, "path must be non-empty and free of NUL bytes");
    return NULL;
  }
  j->base.syscall = syscall;
  j->base.cleanup = fs_cleanup;
  return j;
}

/* scandir(path: Uint8Array) -> Promise<Buffer> (see posix.h for the layout) */
static napi_value scandir_entries(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  fs_job *j = new_fs_job(env, argv[0], "scandir");
  if (!j) return NULL;
  j->base.exec = scandir_exec;
  j->base.done = buf_done;
  return job_start(env, &j->base, "holdfast:scandir");
}

/* scandirMany: several directories, one job. */
typedef struct scan_many_job {
  job base;
  char *paths; /* NUL-separated */
  size_t count;
  hf_buf *bufs;
  int *errs;
} scan_many_job;

static void scan_many_exec(job *base) {
  scan_many_job *j = (scan_many_job *)base;
  const char *path = j->paths;
  for (size_t i = 0; i < j->count; i++) {
    j->errs[i] = hf_scandir(path, &j->bufs[i]);
    path += strlen(path) + 1;
  }
}

static napi_value scan_many_done(napi_env env, job *base) {
  scan_many_job *j = (scan_many_job *)base;
  napi_value arr, el;
  CALL(env, napi_create_array_with_length(env, j->count, &arr));
  for (size_t i = 0; i < j->count; i++) {
    if (j->errs[i]) {
      CALL(env, napi_create_int32(env, j->errs[i], &el));
    } else {
      uint8_t *mem = j->bufs[i].data;
      j->bufs[i].data = NULL; /* hand_over owns it now, whatever happens */
      el = hand_over(env, mem, j->bufs[i].len);
      if (!el) return NULL;
    }
    CALL(env, napi_set_element(env, arr, (uint32_t)i, el));
  }
  return arr;
}

static void scan_many_cleanup(job *base) {
  scan_many_job *j = (scan_many_job *)base;
  for (size_t i = 0; j->bufs && i < j->count; i++) free(j->bufs[i].data);
  free(j->bufs);
  free(j->errs);
  free(j->paths);
}

/* scandirMany(paths: NUL-separated bytes) -> Promise<(Buffer | number)[]>: per
 * directory, its scandir buffer (layout in posix.h) or the errno. */
static napi_value scandir_many(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint8_t *paths;
  size_t paths_len, count = 0;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_paths(env, argv[0], &paths, &paths_len, &count))
    return invalid(env, "scandirMany(paths): non-empty NUL-terminated paths");
  NEW_JOB(scan_many_job, j);
  j->base.exec = scan_many_exec;
  j->base.done = scan_many_done;
  j->base.cleanup = scan_many_cleanup;
  j->count = count;
  j->paths = malloc(paths_len);
  j->bufs = calloc(count, sizeof *j->bufs);
  j->errs = calloc(count, sizeof *j->errs);
  if (!j->paths || !j->bufs || !j->errs) {
    job_release(env, &j->base);
    return invalid(env, "out of memory");
  }
  memcpy(j->paths, paths, paths_len);
  return job_start(env, &j->base, "holdfast:scandirmany");
}

static void read_file_exec(job *base) {
  fs_job *j = (fs_job *)base;
  size_t len = 0;
  base->sys_errno = hf_read_file(base->path, j->buf.data, j->buf.cap, &len);
  j->buf.len = len;
}

static napi_value read_file_done(napi_env env, job *base) {
  napi_value out;
  CALL(env, napi_create_double(env, (double)((fs_job *)base)->buf.len, &out));
  return out;
}

static void read_file_cleanup(job *base) { ((fs_job *)base)->buf.data = NULL; /* the caller's */ }

/* readFile(path, out) -> Promise<number>: reads the whole file into out;
 * EFBIG when it holds more than out.length bytes */
static napi_value read_file(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint8_t *p;
  size_t n;
  static uint8_t none;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (!get_bytes(env, argv[1], &p, &n)) return invalid(env, "readFile(path, out): out must be a Uint8Array");
  fs_job *j = new_fs_job(env, argv[0], "read");
  if (!j) return NULL;
  j->buf.data = n ? p : &none;
  j->buf.cap = n;
  j->base.exec = read_file_exec;
  j->base.done = read_file_done;
  j->base.cleanup = read_file_cleanup;
  if (!job_hold(env, &j->base, argv[1])) {
    job_release(env, &j->base);
    return failed(env, "cannot reference argument");
  }
  return job_start(env, &j->base, "holdfast:read");
}

/* Reads meta from 7 numbers: mode, uid, gid, atimeSec, atimeNsec, mtimeSec, mtimeNsec. */
static int get_meta(napi_env env, napi_value *v, hf_meta *m) {
  int64_t mode;
  if (!get_i64(env, v[0], &mode) || mode < 0 || mode > 07777 || !get_i64(env, v[1], &m->uid) ||
      !get_i64(env, v[2], &m->gid) || m->uid < -1 || m->gid < -1 || !get_i64(env, v[3], &m->atime_sec) ||
      !get_i64(env, v[4], &m->atime_nsec) || !get_i64(env, v[5], &m->mtime_sec) ||
      !get_i64(env, v[6], &m->mtime_nsec) || m->atime_nsec < 0 || m->atime_nsec > 999999999 ||
      m->mtime_nsec < 0 || m->mtime_nsec > 999999999)
    return 0;
  m->mode = (uint32_t)mode;
  if (m->uid < 0 || m->gid < 0) m->uid = m->gid = -1;
  return 1;
}

static void write_file_exec(job *base) {
  fs_job *j = (fs_job *)base;
  base->sys_errno = hf_write_file(base->path, j->data, j->data_len, j->size, &j->meta);
}

/* writeFile(path, data | null, size, mode, uid, gid, aSec, aNsec, mSec, mNsec) -> Promise<void> */
static napi_value write_file(napi_env env, napi_callback_info info) {
  napi_value argv[10];
  int64_t size;
  if (!get_args(env, info, 10, argv)) return NULL;
  fs_job *j = new_fs_job(env, argv[0], "write");
  if (!j) return NULL;
  uint8_t *data = NULL;
  if ((!is_nullish(env, argv[1]) && !get_bytes(env, argv[1], &data, &j->data_len)) ||
      !get_i64(env, argv[2], &size) || size < 0 || !get_meta(env, argv + 3, &j->meta)) {
    job_release(env, &j->base);
    return invalid(env, "writeFile(path, data|null, size, mode, uid, gid, aSec, aNsec, mSec, mNsec)");
  }
  j->data = data;
  j->size = (uint64_t)size;
  if (data && !job_hold(env, &j->base, argv[1])) {
    job_release(env, &j->base);
    return failed(env, "cannot reference argument");
  }
  j->base.exec = write_file_exec;
  return job_start(env, &j->base, "holdfast:write");
}

static void set_meta_exec(job *base) {
  fs_job *j = (fs_job *)base;
  base->sys_errno = hf_set_meta(base->path, &j->meta, j->nofollow);
}

/* setMeta(path, isLink, mode, uid, gid, aSec, aNsec, mSec, mNsec) -> Promise<void> */
static napi_value set_meta(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  if (!get_args(env, info, 9, argv)) return NULL;
  fs_job *j = new_fs_job(env, argv[0], "setmeta");
  if (!j) return NULL;
  if (!get_bool(env, argv[1], &j->nofollow) || !get_meta(env, argv + 2, &j->meta)) {
    job_release(env, &j->base);
    return invalid(env, "setMeta(path, isLink, mode, uid, gid, aSec, aNsec, mSec, mNsec)");
  }
  j->base.exec = set_meta_exec;
  return job_start(env, &j->base, "holdfast:setmeta");
}

/* readFiles: many small files in one job. */
typedef struct read_many_job {
  job base;
  char *paths;       /* NUL-separated */
  size_t count;
  double *sizes;     /* listed size per file: its room in out */
  uint8_t *out;
  size_t out_len;
  uint8_t *records;  /* per file: u32 offset, u32 length, i32 errno */
} read_many_job;

static void read_many_exec(job *base) {
  read_many_job *j = (read_many_job *)base;
  const char *path = j->paths;
  size_t pos = 0;
  for (size_t i = 0; i < j->count; i++) {
    size_t room = (size_t)j->sizes[i];
    size_t len = 0;
    int e = room > j->out_len - pos ? EFBIG : hf_read_file(path, j->out + pos, room, &len);
    put_u32(j->records + i * 12, (uint32_t)pos);
    put_u32(j->records + i * 12 + 4, (uint32_t)(e ? 0 : len));
    put_u32(j->records + i * 12 + 8, (uint32_t)e);
    if (!e) pos += len;
    path += strlen(path) + 1;
  }
}

static napi_value read_many_done(napi_env env, job *base) {
  read_many_job *j = (read_many_job *)base;
  napi_value out;
  void *dst;
  CALL(env, napi_create_buffer_copy(env, j->count * 12, j->records, &dst, &out));
  return out;
}

static void read_many_cleanup(job *base) {
  read_many_job *j = (read_many_job *)base;
  free(j->paths);
  free(j->sizes);
  free(j->records);
}

/* readFiles(paths: Uint8Array (NUL-separated), sizes: number[], out) -> Promise<Buffer>
 *   reads each regular file (as readFile) into out, one after another, each
 *   given room for its listed size; per file 12 bytes: u32 offset, u32
 *   length, i32 errno (EFBIG: it grew past its size). */
static napi_value read_files(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint8_t *paths, *out;
  size_t paths_len, out_len;
  bool is_arr = false;
  uint32_t n = 0;
  static uint8_t none;
  if (!get_args(env, info, 3, argv)) return NULL;
  size_t count = 0;
  if (!get_paths(env, argv[0], &paths, &paths_len, &count) ||
      napi_is_array(env, argv[1], &is_arr) != napi_ok || !is_arr || !get_bytes(env, argv[2], &out, &out_len))
    return invalid(env, "readFiles(paths: NUL-separated bytes, sizes: number[], out)");
  CALL(env, napi_get_array_length(env, argv[1], &n));
  if (count != n || n == 0) return invalid(env, "readFiles: one size per path");
  NEW_JOB(read_many_job, j);
  j->base.exec = read_many_exec;
  j->base.done = read_many_done;
  j->base.cleanup = read_many_cleanup;
  j->count = n;
  j->paths = malloc(paths_len);
  j->sizes = calloc(n, sizeof *j->sizes);
  j->records = calloc(n, 12);
  if (!j->paths || !j->sizes || !j->records) {
    job_release(env, &j->base);
    return invalid(env, "out of memory");
  }
  memcpy(j->paths, paths, paths_len);
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    int64_t sz;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok || !get_i64(env, el, &sz) || sz < 0) {
      job_release(env, &j->base);
      return invalid(env, "readFiles: sizes must be whole numbers");
    }
    j->sizes[i] = (double)sz;
    /* an empty path (two NULs in a row) would be a bug in the caller */
  }
  j->out = out_len ? out : &none;
  j->out_len = out_len;
  HOLD(env, j, argv[2]);
  return job_start(env, &j->base, "holdfast:readfiles");
}

/* writeFiles: many small files and symlinks, each written and given its metadata, in one job. */
typedef struct write_many_job {
  job base;
  char *paths;
  size_t count;
  const uint8_t **data; /* per entry: content or link target; NULL: none (a hole) */
  size_t *lens;
  int64_t *nums;        /* per entry: kind, size, mode, uid, gid, aSec, aNsec, mSec, mNsec */
  uint8_t *records;     /* per entry: i32 errno */
} write_many_job;

#define WRITE_NUMS 9
#define WRITE_KIND_FILE 0
#define WRITE_KIND_LINK 1

static void write_many_exec(job *base) {
  write_many_job *j = (write_many_job *)base;
  const char *path = j->paths;
  for (size_t i = 0; i < j->count; i++) {
    const int64_t *v = j->nums + i * WRITE_NUMS;
    hf_meta m = {(uint32_t)v[2], v[3], v[4], v[5], v[6], v[7], v[8]};
    int e = v[0] == WRITE_KIND_LINK ? hf_write_link(path, j->data[i], j->lens[i], &m)
                                    : hf_write_file(path, j->data[i], j->lens[i], (uint64_t)v[1], &m);
    put_u32(j->records + i * 4, (uint32_t)e);
    path += strlen(path) + 1;
  }
}

static napi_value write_many_done(napi_env env, job *base) {
  write_many_job *j = (write_many_job *)base;
  napi_value out;
  void *dst;
  CALL(env, napi_create_buffer_copy(env, j->count * 4, j->records, &dst, &out));
  return out;
}

static void write_many_cleanup(job *base) {
  write_many_job *j = (write_many_job *)base;
  free(j->paths);
  free(j->data);
  free(j->lens);
  free(j->nums);
  free(j->records);
}

/* writeFiles(paths: NUL-separated bytes, parts: (Uint8Array | null)[], nums: number[] (9 per
 *   entry: kind, size, mode, uid, gid, atimeSec, atimeNsec, mtimeSec, mtimeNsec)) -> Promise<Buffer>
 *   kind 0: a regular file as writeFile (its part the content, null: a hole of size bytes);
 *   kind 1: a symlink as hf_write_link (its part the target). Per entry an i32 errno.
 *   The parts array is referenced for the job: the caller must not change it. */
static napi_value write_files(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint8_t *paths;
  size_t paths_len;
  bool is_arr = false, nums_arr = false;
  uint32_t n = 0, nn = 0;
  if (!get_args(env, info, 3, argv)) return NULL;
  size_t count = 0;
  if (!get_paths(env, argv[0], &paths, &paths_len, &count) ||
      napi_is_array(env, argv[1], &is_arr) != napi_ok || !is_arr ||
      napi_is_array(env, argv[2], &nums_arr) != napi_ok || !nums_arr)
    return invalid(env, "writeFiles(paths, parts, nums)");
  CALL(env, napi_get_array_length(env, argv[1], &n));
  CALL(env, napi_get_array_length(env, argv[2], &nn));
  if (count != n || n == 0 || nn != n * WRITE_NUMS) return invalid(env, "writeFiles: one part and 9 numbers per path");
  NEW_JOB(write_many_job, j);
  j->base.exec = write_many_exec;
  j->base.done = write_many_done;
  j->base.cleanup = write_many_cleanup;
  j->count = n;
  j->paths = malloc(paths_len);
  j->data = calloc(n, sizeof *j->data);
  j->lens = calloc(n, sizeof *j->lens);
  j->nums = calloc((size_t)n * WRITE_NUMS, sizeof *j->nums);
  j->records = calloc(n, 4);
  if (!j->paths || !j->data || !j->lens || !j->nums || !j->records) {
    job_release(env, &j->base);
    return invalid(env, "out of memory");
  }
  memcpy(j->paths, paths, paths_len);
  for (uint32_t i = 0; i < n * WRITE_NUMS; i++) {
    napi_value el;
    if (napi_get_element(env, argv[2], i, &el) != napi_ok || !get_i64(env, el, &j->nums[i])) {
      job_release(env, &j->base);
      return invalid(env, "writeFiles: numbers must be whole");
    }
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    uint8_t *part = NULL;
    int64_t *v = j->nums + (size_t)i * WRITE_NUMS;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok ||
        (!is_nullish(env, el) && !get_bytes(env, el, &part, &j->lens[i])) ||
        (v[0] != WRITE_KIND_FILE && v[0] != WRITE_KIND_LINK) || (v[0] == WRITE_KIND_LINK && !part) ||
        v[1] < 0 || (v[0] == WRITE_KIND_FILE && part && (uint64_t)v[1] < j->lens[i]) ||
        v[2] < 0 || v[2] > 07777 || v[3] < -1 || v[4] < -1 || v[6] < 0 || v[6] > 999999999 ||
        v[8] < 0 || v[8] > 999999999) {
      job_release(env, &j->base);
      return invalid(env, "writeFiles: invalid part, kind, size or metadata");
    }
    if (v[3] < 0 || v[4] < 0) v[3] = v[4] = -1;
    j->data[i] = part && j->lens[i] ? part : NULL;
    if (!j->data[i]) j->lens[i] = 0;
  }
  HOLD(env, j, argv[1]);
  return job_start(env, &j->base, "holdfast:writefiles");
}

static void times_exec(job *base) {
  fs_job *j = (fs_job *)base;
  base->sys_errno = hf_set_times(base->path, j->a_sec, (long)j->a_nsec, j->m_sec, (long)j->m_nsec, j->nofollow);
}

/* setTimes(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec, nofollow) -> Promise<void> */
static napi_value set_times(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;
  fs_job *j = new_fs_job(env, argv[0], "utimensat");
  if (!j) return NULL;
  if (!get_i64(env, argv[1], &j->a_sec) || !get_i64(env, argv[2], &j->a_nsec) ||
      !get_i64(env, argv[3], &j->m_sec) || !get_i64(env, argv[4], &j->m_nsec) ||
      j->a_nsec < 0 || j->a_nsec > 999999999 || j->m_nsec < 0 || j->m_nsec > 999999999 ||
      !get_bool(env, argv[5], &j->nofollow)) {
    job_release(env, &j->base);
    return invalid(env, "setTimes(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec, nofollow)");
  }
  j->base.exec = times_exec;
  return job_start(env, &j->base, "holdfast:utimensat");
}

static void mknod_exec(job *base) {
  fs_job *j = (fs_job *)base;
  base->sys_errno = hf_make_node(base->path, j->mode, j->dev);
}

/* mknod(path, mode, dev) -> Promise<void> */
static napi_value make_node(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t dev;
  if (!get_args(env, info, 3, argv)) return NULL;
  fs_job *j = new_fs_job(env, argv[0], "mknod");
  if (!j) return NULL;
  if (!get_u32(env, argv[1], &j->mode) || !get_i64(env, argv[2], &dev) || dev < 0) {
    job_release(env, &j->base);
    return invalid(env, "mknod(path, mode, dev)");
  }
  j->dev = (uint64_t)dev;
  j->base.exec = mknod_exec;
  return job_start(env, &j->base, "holdfast:mknod");
}

/* ---------- module ---------- */

/* sdNotify(socketName: string, state: Uint8Array) -> number: 0 or an errno.
 * Synchronous: one non-blocking datagram to a local socket. */
static napi_value sd_notify(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  char name[128];
  size_t name_len = 0;
  uint8_t *state;
  size_t state_len;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &name_len) != napi_ok || name_len == 0 ||
      name_len >= sizeof name - 1 || strlen(name) != name_len || !get_bytes(env, argv[1], &state, &state_len))
    return invalid(env, "sdNotify(socketName: string, state: Uint8Array)");
  CALL(env, napi_create_int32(env, hf_sd_notify(name, state, state_len), &out));
  return out;
}

static napi_value versions(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out, v;
  CALL(env, napi_create_object(env, &out));
  CALL(env, napi_create_string_utf8(env, ZSTD_versionString(), NAPI_AUTO_LENGTH, &v));
  CALL(env, napi_set_named_property(env, out, "zstd", v));
  CALL(env, napi_create_string_utf8(env, OpenSSL_version(OPENSSL_VERSION), NAPI_AUTO_LENGTH, &v));
  CALL(env, napi_set_named_property(env, out, "openssl", v));
  return out;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  /* glibc raises its mmap threshold to the size of any large block freed,
   * after which multi-MiB buffers come from the brk heap and fragment it
   * (measured: ~45 MB of a backup's RSS). A fixed threshold keeps large
   * buffers mapped, so freeing them returns memory to the system. The
   * process is Holdfast's own; this is its allocator policy. */
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  /* Threadpool threads otherwise get an arena each, which keeps freed
   * memory of its own (measured: ~15 MB over a backup); two suffice here. */
  mallopt(M_ARENA_MAX, 2);
  napi_property_descriptor props[] = {
      {"createChunker", NULL, create_chunker, NULL, NULL, NULL, napi_enumerable, NULL},
      {"chunkerUpdate", NULL, chunker_update, NULL, NULL, NULL, napi_enumerable, NULL},
      {"chunkerReset", NULL, chunker_reset, NULL, NULL, NULL, napi_enumerable, NULL},
      {"createSealer", NULL, create_sealer, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sealBound", NULL, seal_bound, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sealBlob", NULL, seal_blob, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sealData", NULL, seal_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sealBlobs", NULL, seal_blobs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readFiles", NULL, read_files, NULL, NULL, NULL, napi_enumerable, NULL},
      {"open", NULL, open_sealed, NULL, NULL, NULL, napi_enumerable, NULL},
      {"openBlobs", NULL, open_blobs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"writeFiles", NULL, write_files, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sha256", NULL, sha256_parts, NULL, NULL, NULL, napi_enumerable, NULL},
      {"createHasher", NULL, create_hasher, NULL, NULL, NULL, napi_enumerable, NULL},
      {"hasherUpdate", NULL, hasher_update, NULL, NULL, NULL, napi_enumerable, NULL},
      {"hasherDigest", NULL, hasher_digest, NULL, NULL, NULL, napi_enumerable, NULL},
      {"hasherState", NULL, hasher_state, NULL, NULL, NULL, napi_enumerable, NULL},
      {"hasherRestore", NULL, hasher_restore, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readFile", NULL, read_file, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scandir", NULL, scandir_entries, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scandirMany", NULL, scandir_many, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setTimes", NULL, set_times, NULL, NULL, NULL, napi_enumerable, NULL},
      {"writeFile", NULL, write_file, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setMeta", NULL, set_meta, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mknod", NULL, make_node, NULL, NULL, NULL, napi_enumerable, NULL},
      {"versions", NULL, versions, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sdNotify", NULL, sd_notify, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CALL(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}
