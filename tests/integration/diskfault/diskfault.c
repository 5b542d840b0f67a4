/*
 * diskfault.c - an LD_PRELOAD library that makes the disk fail on demand,
 * for tests/integration/daemon_diskfault.sh. While the file named by
 * $TXMQ_DISKFAULT exists, its first word says what fails:
 *
 *   enospc   pwritev() writes half of what it was given (a short write),
 *            then fails with ENOSPC: a record is half on disk
 *   eio      pwritev() fails with EIO before writing anything
 *   fsync    fdatasync() fails with EIO (the data may have been written)
 *
 * Anything else, or no file: the real calls. Test-only; not installed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

typedef ssize_t (*pwritev_fn)(int, const struct iovec*, int, off_t);
typedef int (*fdatasync_fn)(int);

/* The current fault: 0 none, 1 enospc, 2 eio, 3 fsync. Read on every call,
 * so a test turns it on and off by creating and removing the file. */
static int fault_now(void) {
  const char* path = getenv("TXMQ_DISKFAULT");
  if (path == NULL) return 0;
  FILE* f = fopen(path, "r");
  if (f == NULL) return 0;
  char word[16] = {0};
  int n = fscanf(f, "%15s", word);
  fclose(f);
  if (n != 1) return 0;
  if (strcmp(word, "enospc") == 0) return 1;
  if (strcmp(word, "eio") == 0) return 2;
  if (strcmp(word, "fsync") == 0) return 3;
  return 0;
}

ssize_t pwritev(int fd, const struct iovec* iov, int iovcnt, off_t off) {
  pwritev_fn real = (pwritev_fn)dlsym(RTLD_NEXT, "pwritev");
  int fault = fault_now();
  if (fault == 2) {
    errno = EIO;
    return -1;
  }
  if (fault == 1) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    if (total < 2 || iovcnt < 1) {
      errno = ENOSPC;
      return -1;
    }
    /* Half of the first buffer (or of everything, if it is smaller): the
     * caller sees a short write and writes the rest, which then fails. */
    size_t half = iov[0].iov_len / 2;
    if (half == 0) {
      errno = ENOSPC;
      return -1;
    }
    struct iovec one = {iov[0].iov_base, half};
    return real(fd, &one, 1, off);
  }
  return real(fd, iov, iovcnt, off);
}

int fdatasync(int fd) {
  fdatasync_fn real = (fdatasync_fn)dlsym(RTLD_NEXT, "fdatasync");
  if (fault_now() == 3) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}
