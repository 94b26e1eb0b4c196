/*
 * File-system calls Node does not offer, or offers one entry at a time:
 *  - hf_scandir: a directory's entries with their lstat and symlink targets
 *    in one call (one threadpool job per directory instead of one per entry),
 *    sorted by name bytes;
 *  - hf_set_times: utimensat with nanoseconds (Node's utimes rounds to ~µs);
 *  - hf_make_node: mknod for FIFOs and device nodes.
 * Errors are errno values; no globals.
 */
#ifndef HF_POSIX_H
#define HF_POSIX_H

#include <stddef.h>
#include <stdint.h>

/* Packed entry, little endian, 8-byte aligned records:
 *   0 u32 name_len     4 i32 stat_errno (0 ok)   8 u32 st_mode    12 u32 uid
 *  16 u32 gid         20 u32 mtime_nsec         24 u32 ctime_nsec 28 u32 target_len
 *  32 u64 size        40 u64 ino                48 u64 dev        56 u64 nlink
 *  64 u64 rdev        72 i64 mtime_sec          80 i64 ctime_sec  88 u64 blocks (512 B)
 *  96 name bytes, then symlink target bytes, then zero padding to 8.
 * Buffer: u32 count, u32 reserved, then the records. */
#define HF_SCAN_HEADER 96u

typedef struct hf_buf {
  uint8_t *data;
  size_t len;
  size_t cap;
} hf_buf;

/* Returns 0 or an errno (of opendir/readdir, or ENOMEM). */
int hf_scandir(const char *path, hf_buf *out);

/* Reads a whole regular file into buf (cap bytes): open (O_NOFOLLOW,
 * O_NONBLOCK, O_NOATIME when permitted), read to the end, close. Returns 0,
 * an errno, EINVAL when it is not a regular file, or EFBIG when it holds
 * more than cap bytes. */
int hf_read_file(const char *path, uint8_t *buf, size_t cap, size_t *len);

/* Metadata to apply; uid/gid -1 leaves ownership alone. */
typedef struct hf_meta {
  uint32_t mode;
  int64_t uid, gid;
  int64_t atime_sec, atime_nsec, mtime_sec, mtime_nsec;
} hf_meta;

/* Creates (or truncates) a regular file without following a symlink at the
 * final component (an existing symlink there is replaced), writes data
 * (len bytes; NULL leaves a hole), sets its size, owner, mode and times, and
 * closes it. Returns 0 or an errno; EISDIR when a directory is in the way. */
int hf_write_file(const char *path, const uint8_t *data, size_t len, uint64_t size,
                  const hf_meta *m);

/* Creates a symlink to target (len bytes, no NUL) at path, replacing a file,
 * symlink or special file there (never a directory: EISDIR), then sets its
 * owner and times (not following it). Returns 0 or an errno. */
int hf_write_link(const char *path, const uint8_t *target, size_t len, const hf_meta *m);

/* Applies owner, mode (not to symlinks) and times to a path, not following
 * a final symlink. Returns 0 or an errno. */
int hf_set_meta(const char *path, const hf_meta *m, int is_link);

/* Returns 0 or an errno. */
int hf_set_times(const char *path, int64_t atime_sec, long atime_nsec, int64_t mtime_sec,
                 long mtime_nsec, int nofollow);
int hf_make_node(const char *path, uint32_t mode, uint64_t dev);

/* Sends one datagram (an sd_notify(3) state such as "READY=1") to the
 * AF_UNIX datagram socket named by `socket_name` as systemd sets
 * NOTIFY_SOCKET: a path, or "@name" for the abstract namespace. Sent by the
 * calling process itself (no helper child), so NotifyAccess=main accepts
 * it. Non-blocking. Returns 0 or an errno (EINVAL for a malformed name). */
int hf_sd_notify(const char *socket_name, const uint8_t *state, size_t len);

#endif
