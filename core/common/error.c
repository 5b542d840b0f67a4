/*
 * error.c - names and messages for TXMQ_E* codes, and errno mapping.
 */
#include <errno.h>

#include "txmq/error.h"

const char* txmq_strerror(int code) {
  switch (code) {
    case 0: return "success";
#define XX(name, val, msg) case TXMQ_##name: return msg;
    TXMQ_ERRNO_MAP(XX)
#undef XX
    default: return "unknown error";
  }
}

const char* txmq_err_name(int code) {
  switch (code) {
    case 0: return "OK";
#define XX(name, val, msg) case TXMQ_##name: return #name;
    TXMQ_ERRNO_MAP(XX)
#undef XX
    default: return "EUNKNOWN";
  }
}

int txmq_err_from_errno(int err) {
  switch (err) {
    case 0: return 0;
    case ENOMEM: return TXMQ_ENOMEM;
    case ENOSPC:
    case EDQUOT: return TXMQ_ENOSPC;
    case ENOENT: return TXMQ_ENOTFOUND;
    case EEXIST: return TXMQ_EEXIST;
    case EAGAIN: return TXMQ_EAGAIN;
    case EROFS: return TXMQ_EROFS;
    case EINVAL: return TXMQ_EINVAL;
    case EFBIG: return TXMQ_ETOOBIG;
    case ETIMEDOUT: return TXMQ_ETIMEDOUT;
    case EBUSY: return TXMQ_EBUSY;
    default: return TXMQ_EIO;
  }
}
