/* Messages: a tiny formatter (%s, and %d taking long long), so the core needs no stdio.
 * Every refusal of the core is one line through mam_fail(). */
#include <stdarg.h>

#include "internal.h"

typedef struct {
  char *buf;
  size_t cap;
  size_t len;
} msgbuf;

static void put_char(msgbuf *mb, char c) {
  if (c == '\n' || c == '\r') c = ' '; /* one line, whatever the strings hold */
  if (mb->cap > 0 && mb->len + 1 < mb->cap) mb->buf[mb->len++] = c;
}

static void put_str(msgbuf *mb, const char *s) {
  while (s != NULL && *s != '\0') put_char(mb, *s++);
}

static void put_ll(msgbuf *mb, long long v) {
  char digits[24];
  int n = 0;
  unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  do {
    digits[n++] = (char)('0' + (int)(u % 10u));
    u /= 10u;
  } while (u != 0u);
  if (v < 0) put_char(mb, '-');
  while (n > 0) put_char(mb, digits[--n]);
}

int mam_fail(char *msg, size_t msg_len, int status, const char *fmt, ...) {
  msgbuf mb;
  va_list ap;
  mb.buf = msg;
  mb.cap = msg == NULL ? 0 : msg_len;
  mb.len = 0;
  put_str(&mb, "MAM_SPARSE: ");
  va_start(ap, fmt);
  for (; *fmt != '\0'; ++fmt) {
    if (fmt[0] == '%' && fmt[1] == 's') {
      put_str(&mb, va_arg(ap, const char *));
      ++fmt;
    } else if (fmt[0] == '%' && fmt[1] == 'd') {
      put_ll(&mb, va_arg(ap, long long));
      ++fmt;
    } else {
      put_char(&mb, *fmt);
    }
  }
  va_end(ap);
  if (mb.cap > 0) mb.buf[mb.len] = '\0';
  return status;
}

void mam_clear_message(char *msg, size_t msg_len) {
  if (msg != NULL && msg_len > 0) msg[0] = '\0';
}

const char *mam_status_name(int status) {
  switch (status) {
    case MAM_OK: return "MAM_OK";
    case MAM_ERR_ARGUMENT: return "MAM_ERR_ARGUMENT";
    case MAM_ERR_TENSOR_COUNT: return "MAM_ERR_TENSOR_COUNT";
    case MAM_ERR_TYPE: return "MAM_ERR_TYPE";
    case MAM_ERR_SHAPE: return "MAM_ERR_SHAPE";
    case MAM_ERR_LENGTH: return "MAM_ERR_LENGTH";
    case MAM_ERR_ROW_COUNT: return "MAM_ERR_ROW_COUNT";
    case MAM_ERR_COLUMN: return "MAM_ERR_COLUMN";
    case MAM_ERR_ACTIVATION: return "MAM_ERR_ACTIVATION";
    case MAM_ERR_OPTIONS: return "MAM_ERR_OPTIONS";
    case MAM_ERR_QUANT: return "MAM_ERR_QUANT";
    default: return "MAM_ERR_UNKNOWN";
  }
}

const char *mam_type_name(int32_t t) {
  switch (t) {
    case MAM_TYPE_NONE: return "none";
    case MAM_TYPE_INT32: return "int32";
    case MAM_TYPE_UINT8: return "uint8";
    case MAM_TYPE_INT64: return "int64";
    case MAM_TYPE_INT16: return "int16";
    case MAM_TYPE_INT8: return "int8";
    default: return "an unsupported type";
  }
}

