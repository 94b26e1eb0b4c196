#define _GNU_SOURCE
#include "posix.h"

#include <dirent.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

typedef struct name_ref {
  char *name;
  size_t len;
} name_ref;

static int cmp_names(const void *a, const void *b) {
  const name_ref *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->name, y->name, n);
  if (c) return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

static int buf_reserve(hf_buf *b, size_t more) {
  if (b->len + more <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  uint8_t *p = realloc(b->data, cap);
  if (!p) return ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Appends one record; the symlink target is read with readlinkat. */
static int append_entry(hf_buf *out, int dfd, const name_ref *n) {
  struct stat st;
  int stat_errno = 0;
  char target[4096];
  ssize_t tlen = 0;
  memset(&st, 0, sizeof st);
  if (fstatat(dfd, n->name, &st, AT_SYMLINK_NOFOLLOW) != 0) stat_errno = errno;
  if (!stat_errno && S_ISLNK(st.st_mode)) {
    tlen = readlinkat(dfd, n->name, target, sizeof target);
    if (tlen < 0 || (size_t)tlen == sizeof target) {
      stat_errno = tlen < 0 ? errno : ENAMETOOLONG;
      tlen = 0;
    }
  }
  size_t rec = HF_SCAN_HEADER + n->len + (size_t)tlen;
  size_t padded = (rec + 7) & ~(size_t)7;
  int e = buf_reserve(out, padded);
  if (e) return e;
  uint8_t *p = out->data + out->len;
  memset(p, 0, padded);
  put32(p + 0, (uint32_t)n->len);
  put32(p + 4, (uint32_t)stat_errno);
  put32(p + 8, (uint32_t)st.st_mode);
  put32(p + 12, (uint32_t)st.st_uid);
  put32(p + 16, (uint32_t)st.st_gid);
  put32(p + 20, (uint32_t)st.st_mtim.tv_nsec);
  put32(p + 24, (uint32_t)st.st_ctim.tv_nsec);
  put32(p + 28, (uint32_t)tlen);
  put64(p + 32, (uint64_t)st.st_size);
  put64(p + 40, (uint64_t)st.st_ino);
  put64(p + 48, (uint64_t)st.st_dev);
  put64(p + 56, (uint64_t)st.st_nlink);
  put64(p + 64, (uint64_t)st.st_rdev);
  put64(p + 72, (uint64_t)(int64_t)st.st_mtim.tv_sec);
  put64(p + 80, (uint64_t)(int64_t)st.st_ctim.tv_sec);
  put64(p + 88, (uint64_t)st.st_blocks);
  memcpy(p + HF_SCAN_HEADER, n->name, n->len);
  if (tlen) memcpy(p + HF_SCAN_HEADER + n->len, target, (size_t)tlen);
  out->len += padded;
  return 0;
}

int hf_scandir(const char *path, hf_buf *out) {
  DIR *d = opendir(path);
  name_ref *names = NULL;
  size_t count = 0, cap = 0;
  int e = 0;
  if (!d) return errno;
  for (;;) {
    struct dirent *de;
    errno = 0;
    de = readdir(d);
    if (!de) {
      e = errno;
      break;
    }
    if (de->d_name[0] == '.' &&
        (de->d_name[1] == 0 || (de->d_name[1] == '.' && de->d_name[2] == 0)))
      continue;
    if (count == cap) {
      size_t ncap = cap ? cap * 2 : 64;
      name_ref *nn = realloc(names, ncap * sizeof *names);
      if (!nn) {
        e = ENOMEM;
        break;
      }
      names = nn;
      cap = ncap;
    }
    names[count].len = strlen(de->d_name);
    names[count].name = strdup(de->d_name);
    if (!names[count].name) {
      e = ENOMEM;
      break;
    }
    count++;
  }
  if (!e) {
    qsort(names, count, sizeof *names, cmp_names);
    e = buf_reserve(out, 8);
    if (!e) {
      put32(out->data, (uint32_t)count);
      put32(out->data + 4, 0);
      out->len = 8;
    }
    for (size_t i = 0; !e && i < count; i++) e = append_entry(out, dirfd(d), &names[i]);
  }
  for (size_t i = 0; i < count; i++) free(names[i].name);
  free(names);
  closedir(d);
  return e;
}

int hf_read_file(const char *path, uint8_t *buf, size_t cap, size_t *len) {
  const int base = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
  struct stat st;
  size_t got = 0;
  int e = 0;
  int fd = open(path, base | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = open(path, base);
  if (fd < 0) return errno;
  if (fstat(fd, &st) != 0) {
    e = errno;
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    e = EINVAL;
    goto done;
  }
  for (;;) {
    uint8_t probe;
    /* Read into the buffer; once it is full, one more byte tells growth from the end. */
    ssize_t n = got < cap ? read(fd, buf + got, cap - got) : read(fd, &probe, 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      e = errno;
      goto done;
    }
    if (n == 0) break;
    if (got == cap) {
      e = EFBIG;
      goto done;
    }
    got += (size_t)n;
  }
  *len = got;
done:
  close(fd);
  return e;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int apply_fd_meta(int fd, const hf_meta *m) {
  struct timespec ts[2];
  if (m->uid >= 0 && fchown(fd, (uid_t)m->uid, (gid_t)m->gid) != 0) return errno;
  /* chown first: it clears setuid/setgid bits that chmod then restores */
  if (fchmod(fd, (mode_t)(m->mode & 07777)) != 0) return errno;
  ts[0].tv_sec = (time_t)m->atime_sec;
  ts[0].tv_nsec = (long)m->atime_nsec;
  ts[1].tv_sec = (time_t)m->mtime_sec;
  ts[1].tv_nsec = (long)m->mtime_nsec;
  if (futimens(fd, ts) != 0) return errno;
  return 0;
}

int hf_write_file(const char *path, const uint8_t *data, size_t len, uint64_t size,
                  const hf_meta *m) {
  const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC;
  int e = 0;
  int fd = open(path, flags, 0600);
  if (fd < 0 && errno == ELOOP) {
    /* a symlink sits where the file goes: replace it, never write through it */
    if (unlink(path) != 0) return errno;
    fd = open(path, flags | O_EXCL, 0600);
  }
  if (fd < 0) return errno;
  if (data && len) e = write_all(fd, data, len);
  if (!e && size != (uint64_t)(data ? len : 0) && ftruncate(fd, (off_t)size) != 0) e = errno;
  if (!e) e = apply_fd_meta(fd, m);
  if (close(fd) != 0 && !e) e = errno;
  return e;
}

int hf_write_link(const char *path, const uint8_t *target, size_t len, const hf_meta *m) {
  char t[4096];
  struct stat st;
  if (len == 0 || len >= sizeof t || memchr(target, 0, len)) return EINVAL;
  memcpy(t, target, len);
  t[len] = 0;
  if (symlink(t, path) != 0) {
    if (errno != EEXIST) return errno;
    /* something is in the way: a directory stays (and is reported), the rest is replaced */
    if (lstat(path, &st) != 0) return errno;
    if (S_ISDIR(st.st_mode)) return EISDIR;
    if (unlink(path) != 0 || symlink(t, path) != 0) return errno;
  }
  return hf_set_meta(path, m, 1);
}

int hf_set_meta(const char *path, const hf_meta *m, int is_link) {
  struct timespec ts[2];
  int flags = is_link ? AT_SYMLINK_NOFOLLOW : 0;
  if (m->uid >= 0 && fchownat(AT_FDCWD, path, (uid_t)m->uid, (gid_t)m->gid, AT_SYMLINK_NOFOLLOW) != 0)
    return errno;
  if (!is_link && fchmodat(AT_FDCWD, path, (mode_t)(m->mode & 07777), AT_SYMLINK_NOFOLLOW) != 0)
    return errno;
  ts[0].tv_sec = (time_t)m->atime_sec;
  ts[0].tv_nsec = (long)m->atime_nsec;
  ts[1].tv_sec = (time_t)m->mtime_sec;
  ts[1].tv_nsec = (long)m->mtime_nsec;
  if (utimensat(AT_FDCWD, path, ts, flags) != 0) return errno;
  return 0;
}

int hf_set_times(const char *path, int64_t atime_sec, long atime_nsec, int64_t mtime_sec,
                 long mtime_nsec, int nofollow) {
  struct timespec ts[2];
  ts[0].tv_sec = (time_t)atime_sec;
  ts[0].tv_nsec = atime_nsec;
  ts[1].tv_sec = (time_t)mtime_sec;
  ts[1].tv_nsec = mtime_nsec;
  if (utimensat(AT_FDCWD, path, ts, nofollow ? AT_SYMLINK_NOFOLLOW : 0) != 0) return errno;
  return 0;
}

int hf_make_node(const char *path, uint32_t mode, uint64_t dev) {
  if (mknod(path, (mode_t)mode, (dev_t)dev) != 0) return errno;
  return 0;
}

int hf_sd_notify(const char *socket_name, const uint8_t *state, size_t len) {
  struct sockaddr_un sa;
  size_t n = strlen(socket_name);
  socklen_t sa_len;
  int fd, e = 0;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (n == 0 || n >= sizeof sa.sun_path || (socket_name[0] != '/' && socket_name[0] != '@')) return EINVAL;
  memcpy(sa.sun_path, socket_name, n);
  if (socket_name[0] == '@') sa.sun_path[0] = 0; /* abstract: no terminating NUL counts */
  sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (socket_name[0] == '@' ? 0 : 1));
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  if (sendto(fd, state, len, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&sa, sa_len) < 0) e = errno;
  close(fd);
  return e;
}
