/*
 * txmq/error.h - the one error model of txmq.
 *
 * Every function that can fail returns an int: 0 on success, a negative
 * TXMQ_E* code on failure. txmq_strerror() and txmq_err_name() turn a code
 * into words. Details (which record was corrupt, which script line failed)
 * are kept in a diagnostic on the handle that failed (for example
 * txmq_log_diag()), never in ad-hoc return strings.
 */
#ifndef TXMQ_ERROR_H
#define TXMQ_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/* X-macro: name, value, message. Values are stable: they travel on the wire. */
#define TXMQ_ERRNO_MAP(XX)                                                     \
  XX(EINVAL, -1, "invalid argument")                                           \
  XX(ENOMEM, -2, "out of memory")                                              \
  XX(EIO, -3, "input/output error")                                            \
  XX(ECORRUPT, -4, "data on disk is corrupt")                                  \
  XX(ENOTFOUND, -5, "not found")                                               \
  XX(EEXIST, -6, "already exists")                                             \
  XX(EAGAIN, -7, "resource temporarily unavailable, try again")                \
  XX(ECLOSED, -8, "handle is closed or closing")                               \
  XX(EROFS, -9, "opened read-only")                                            \
  XX(ENOSPC, -10, "no space left on device")                                   \
  XX(ETOOBIG, -11, "value too large")                                          \
  XX(ELOCKED, -12, "data directory is locked by another process")              \
  XX(ERANGE, -13, "position or offset out of range")                           \
  XX(ECONFLICT, -14, "conflicts with an earlier decision")                     \
  XX(EPARKED, -15, "transaction is parked")                                    \
  XX(EBUSY, -16, "busy: an operation of this kind is already running")        \
  XX(ETIMEDOUT, -17, "timed out")                                              \
  XX(EPROTO, -18, "protocol error")                                            \
  XX(ESCRIPT, -19, "handler script failed")                                    \
  XX(EBADNAME, -20, "invalid name")                                            \
  XX(EFAILED, -21, "storage failed earlier; refusing further writes")          \
  XX(EAUTH, -22, "authentication failed: missing or wrong secret")

typedef enum {
#define TXMQ_ERR_ENUM(name, val, msg) TXMQ_##name = (val),
  TXMQ_ERRNO_MAP(TXMQ_ERR_ENUM)
#undef TXMQ_ERR_ENUM
  TXMQ_ERRNO_MIN = -22
} txmq_errno_t;

/* A sentence describing code, e.g. "data on disk is corrupt". Never NULL;
 * unknown codes give "unknown error". The string is static. */
const char* txmq_strerror(int code);

/* The symbolic name of code without the TXMQ_ prefix, e.g. "ECORRUPT".
 * Never NULL; unknown codes give "EUNKNOWN". The string is static. */
const char* txmq_err_name(int code);

/* Maps a positive errno value (ENOSPC, EIO, ...) to a TXMQ_E* code. */
int txmq_err_from_errno(int err);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_ERROR_H */
