/*
 * config.c — the schema-driven INI loader (see fs_config.h for the accepted syntax).
 *
 * libinih does the tokenising, fed through our own line reader. The reader sees every raw line
 * first, so it can (1) count lines itself (Debian's libinih is built without the line-number
 * handler argument), (2) reject lines longer than libinih's fixed line buffer instead of letting
 * the library split them into two "lines", (3) strip leading blanks so an indented line is never
 * glued onto the previous value as a continuation, (4) check section headers (libinih never tells
 * the handler about an empty section) and (5) keep the raw text so the handler can verify that
 * libinih did not cut an inline comment out of a value. Values are checked against the schema and
 * stored in a fresh struct that reaches the caller only if the whole file is valid.
 */
#include "fs_config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"
#include "fs_log.h"

const char *const fs_cfg_log_levels[] = {"error", "warning", "notice", "info", "debug", NULL};

int fs_cfg_log_level(int index) {
    if (index < 0)
        return FS_LOG_ERR;
    if (index > FS_LOG_DEBUG - FS_LOG_ERR)
        return FS_LOG_DEBUG;
    return FS_LOG_ERR + index;
}

/* ---------------------------------------------------------------- small string helpers */

static bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Copies s[0..n) trimmed of blanks on both ends into out (cap bytes). Returns false if too long. */
static bool copy_trimmed(char *out, size_t cap, const char *s, size_t n) {
    while (n > 0 && is_blank(s[0])) {
        s++;
        n--;
    }
    while (n > 0 && is_blank(s[n - 1]))
        n--;
    if (n >= cap)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    return true;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Writes a printable excerpt of a value for messages: at most 60 characters, non-printables as '?'.
 */
static const char *excerpt(const char *v, char *buf, size_t cap) {
    size_t n = 0;
    for (; v[n] && n + 4 < cap && n < 60; n++)
        buf[n] = (v[n] >= 0x20 && v[n] < 0x7f) ? v[n] : '?';
    if (v[n] && n + 4 <= cap) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* ---------------------------------------------------------------- value parsers */

int fs_cfg_parse_bool(const char *s, bool *v, fs_diag *d) {
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *v = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *v = false;
            return 0;
        }
    }
    char ex[80];
    return fs_diag_set(d, FS_EFORMAT, "'%s' is not a boolean (yes/no, true/false, on/off, 1/0)",
                       excerpt(s, ex, sizeof ex));
}

/* Parses "123" or "1.25" at *p into a fixed-point number: *whole, and *frac as a fraction scaled by
 * 10^9 (digits beyond nine are ignored). Returns false if there is no digit or it overflows. */
static bool parse_decimal(const char **p, uint64_t *whole, uint64_t *frac_e9) {
    const char *s = *p;
    uint64_t w = 0;
    uint64_t f = 0;
    uint64_t scale = 100000000u;
    bool any = false;
    while (*s >= '0' && *s <= '9') {
        if (__builtin_mul_overflow(w, 10u, &w) ||
            __builtin_add_overflow(w, (uint64_t)(*s - '0'), &w))
            return false;
        s++;
        any = true;
    }
    if (*s == '.') {
        s++;
        while (*s >= '0' && *s <= '9') {
            f += (uint64_t)(*s - '0') * scale;
            scale /= 10;
            s++;
            any = true;
        }
    }
    if (!any)
        return false;
    *p = s;
    *whole = w;
    *frac_e9 = f;
    return true;
}

/* value = whole * unit + frac_e9 * unit / 1e9, overflow-checked. */
static bool scale_decimal(uint64_t whole, uint64_t frac_e9, uint64_t unit, uint64_t *out) {
    uint64_t a;
    if (__builtin_mul_overflow(whole, unit, &a))
        return false;
    /* frac_e9 < 1e9, unit <= 2^50 (PiB, days in µs): the product fits in unsigned __int128 */
    unsigned __int128 b = (unsigned __int128)frac_e9 * unit / 1000000000u;
    if (b > UINT64_MAX || __builtin_add_overflow(a, (uint64_t)b, out))
        return false;
    return true;
}

typedef struct {
    const char *name;
    uint64_t mult;
} unit_def;

static const unit_def duration_units[] = {
    {"us", 1},
    {"usec", 1},
    {"ms", 1000},
    {"msec", 1000},
    {"s", 1000000},
    {"sec", 1000000},
    {"min", 60000000},
    {"m", 60000000},
    {"h", 3600000000ull},
    {"hr", 3600000000ull},
    {"d", 86400000000ull},
};

int fs_cfg_parse_duration(const char *s, uint64_t *usec, fs_diag *d) {
    char ex[80];
    const char *p = s;
    uint64_t total = 0;
    int terms = 0;
    while (*p == ' ')
        p++;
    if (strcmp(p, "0") == 0) {
        *usec = 0;
        return 0;
    }
    while (*p) {
        uint64_t whole;
        uint64_t frac;
        if (!parse_decimal(&p, &whole, &frac))
            return fs_diag_set(
                d, FS_EFORMAT,
                "'%s' is not a duration (a number and a unit, e.g. 30s, 500ms, 1min 30s)",
                excerpt(s, ex, sizeof ex));
        while (*p == ' ')
            p++;
        const char *u = p;
        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
            p++;
        size_t ul = (size_t)(p - u);
        if (ul == 0)
            return fs_diag_set(d, FS_EFORMAT,
                               "'%s': a duration needs a unit (us, ms, s, min, h, d), e.g. 30s",
                               excerpt(s, ex, sizeof ex));
        const unit_def *unit = NULL;
        for (size_t i = 0; i < sizeof duration_units / sizeof duration_units[0]; i++) {
            if (strlen(duration_units[i].name) == ul && strncmp(duration_units[i].name, u, ul) == 0)
                unit = &duration_units[i];
        }
        if (!unit)
            return fs_diag_set(d, FS_EFORMAT,
                               "'%s' is not a duration: unknown unit '%.*s' (us, ms, s, min, h, d)",
                               excerpt(s, ex, sizeof ex), (int)(ul > 16 ? 16 : ul), u);
        uint64_t v;
        if (!scale_decimal(whole, frac, unit->mult, &v) || __builtin_add_overflow(total, v, &total))
            return fs_diag_set(d, FS_EFORMAT, "'%s': duration too large",
                               excerpt(s, ex, sizeof ex));
        terms++;
        while (*p == ' ')
            p++;
    }
    if (terms == 0)
        return fs_diag_set(d, FS_EFORMAT, "empty duration");
    *usec = total;
    return 0;
}

static const unit_def size_units[] = {
    {"", 1},
    {"B", 1},
    {"K", 1ull << 10},
    {"k", 1ull << 10},
    {"KiB", 1ull << 10},
    {"M", 1ull << 20},
    {"MiB", 1ull << 20},
    {"G", 1ull << 30},
    {"GiB", 1ull << 30},
    {"T", 1ull << 40},
    {"TiB", 1ull << 40},
    {"kB", 1000},
    {"KB", 1000},
    {"MB", 1000000},
    {"GB", 1000000000ull},
    {"TB", 1000000000000ull},
};

int fs_cfg_parse_size(const char *s, uint64_t *bytes, fs_diag *d) {
    char ex[80];
    const char *p = s;
    uint64_t whole;
    uint64_t frac;
    if (!parse_decimal(&p, &whole, &frac))
        return fs_diag_set(d, FS_EFORMAT, "'%s' is not a size (e.g. 4MiB, 512KiB, 65536)",
                           excerpt(s, ex, sizeof ex));
    while (*p == ' ')
        p++;
    const unit_def *unit = NULL;
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++) {
        if (strcmp(size_units[i].name, p) == 0)
            unit = &size_units[i];
    }
    if (!unit)
        return fs_diag_set(
            d, FS_EFORMAT,
            "'%s' is not a size: unknown unit '%.16s' (B, KiB, MiB, GiB, TiB, kB, MB, "
            "GB, TB)",
            excerpt(s, ex, sizeof ex), p);
    uint64_t v;
    if (!scale_decimal(whole, frac, unit->mult, &v))
        return fs_diag_set(d, FS_EFORMAT, "'%s': size too large", excerpt(s, ex, sizeof ex));
    *bytes = v;
    return 0;
}

void fs_cfg_format_duration(uint64_t usec, char *buf, size_t cap) {
    static const unit_def parts[] = {{"d", 86400000000ull}, {"h", 3600000000ull}, {"min", 60000000},
                                     {"s", 1000000},        {"ms", 1000},         {"us", 1}};
    if (cap == 0)
        return;
    if (usec == 0) {
        snprintf(buf, cap, "0");
        return;
    }
    size_t pos = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof parts / sizeof parts[0] && usec > 0; i++) {
        uint64_t n = usec / parts[i].mult;
        if (n == 0)
            continue;
        usec -= n * parts[i].mult;
        int k = snprintf(buf + pos, cap - pos, "%s%" PRIu64 "%s", pos ? " " : "", n, parts[i].name);
        if (k < 0 || (size_t)k >= cap - pos)
            return;
        pos += (size_t)k;
    }
}

void fs_cfg_format_size(uint64_t bytes, char *buf, size_t cap) {
    static const unit_def parts[] = {
        {"TiB", 1ull << 40}, {"GiB", 1ull << 30}, {"MiB", 1ull << 20}, {"KiB", 1ull << 10}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (bytes >= parts[i].mult && bytes % parts[i].mult == 0) {
            snprintf(buf, cap, "%" PRIu64 "%s", bytes / parts[i].mult, parts[i].name);
            return;
        }
    }
    snprintf(buf, cap, "%" PRIu64 "B", bytes);
}

static bool all_digits(const char *s, size_t n) {
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
    }
    return true;
}

int fs_cfg_check_endpoint(const char *s, fs_diag *d) {
    char ex[80];
    if (strncmp(s, "ipc://", 6) == 0) {
        const char *p = s + 6;
        size_t n = strlen(p);
        if (n == 0 || (p[0] != '/' && p[0] != '@'))
            return fs_diag_set(d, FS_EFORMAT,
                               "'%s': an ipc endpoint needs an absolute path or an @abstract name",
                               excerpt(s, ex, sizeof ex));
        if (n < 2 || n > 107) /* sun_path holds 108 bytes with the terminating NUL */
            return fs_diag_set(d, FS_EFORMAT, "'%s': ipc path must be 1..107 characters",
                               excerpt(s, ex, sizeof ex));
        return 0;
    }
    if (strncmp(s, "tcp://", 6) != 0)
        return fs_diag_set(d, FS_EFORMAT,
                           "'%s' is not an endpoint (expected tcp://HOST:PORT or ipc://PATH)",
                           excerpt(s, ex, sizeof ex));
    const char *host = s + 6;
    const char *colon = strrchr(host, ':');
    if (!colon)
        return fs_diag_set(d, FS_EFORMAT, "'%s': missing ':PORT' (e.g. tcp://10.0.0.1:7400)",
                           excerpt(s, ex, sizeof ex));
    size_t hl = (size_t)(colon - host);
    const char *port = colon + 1;
    size_t pl = strlen(port);
    /* "*": an ephemeral port (the coordinator writes the one it got to STATE_DIR/endpoint) */
    if (strcmp(port, "*") && (!all_digits(port, pl) || pl > 5 || atoi(port) < 1 || atoi(port) > 65535))
        return fs_diag_set(d, FS_EFORMAT, "'%s': port must be a number in 1..65535 (or *)",
                           excerpt(s, ex, sizeof ex));
    if (hl == 0 || hl > 253)
        return fs_diag_set(d, FS_EFORMAT, "'%s': missing or over-long host",
                           excerpt(s, ex, sizeof ex));
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']')
            return fs_diag_set(d, FS_EFORMAT, "'%s': IPv6 address needs closing ']'",
                               excerpt(s, ex, sizeof ex));
        for (size_t i = 1; i + 1 < hl; i++) {
            if (!isxdigit((unsigned char)host[i]) && host[i] != ':' && host[i] != '.')
                return fs_diag_set(d, FS_EFORMAT, "'%s': bad character in IPv6 address",
                                   excerpt(s, ex, sizeof ex));
        }
        return 0;
    }
    if (hl == 1 && host[0] == '*')
        return 0;
    for (size_t i = 0; i < hl; i++) {
        char c = host[i];
        if (!isalnum((unsigned char)c) && c != '.' && c != '-')
            return fs_diag_set(d, FS_EFORMAT, "'%s': bad character '%c' in host name",
                               excerpt(s, ex, sizeof ex), (c >= 0x20 && c < 0x7f) ? c : '?');
    }
    return 0;
}

static bool valid_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > FS_CFG_NAME_MAX || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!isalnum((unsigned char)c) && c != '.' && c != '_' && c != '-')
            return false;
    }
    return true;
}

static const char z85_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/* ---------------------------------------------------------------- the loader */

typedef struct {
    const fs_cfg_schema *s;
    const char *file; /* name for messages */
    const char *text;
    size_t len;
    size_t pos;
    int lineno;
    char raw[FS_CFG_MAX_LINE + 8]; /* current line without leading blanks and newline */
    int *seen;                     /* per schema key: line where it was set, 0 if not */
    void *obj;
    fs_diag *d;
    int err; /* first error code, 0 if none */
} loader;

/* Records the first error only; later ones are consequences or can wait for the next run. */
static int fail(loader *L, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(loader *L, int code, const char *fmt, ...) {
    if (L->err)
        return L->err;
    L->err = code;
    if (L->d) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->d->msg, sizeof L->d->msg, fmt, ap);
        va_end(ap);
        L->d->code = code;
    }
    return code;
}

static void *field(void *obj, const fs_cfg_key *k) { return (char *)obj + k->offset; }

static bool section_known(const fs_cfg_schema *s, const char *sec) {
    for (size_t i = 0; i < s->n_keys; i++) {
        if (strcmp(s->keys[i].section, sec) == 0)
            return true;
    }
    return false;
}

static void list_sections(const fs_cfg_schema *s, char *buf, size_t cap) {
    size_t pos = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < s->n_keys; i++) {
        bool dup = false;
        for (size_t j = 0; j < i; j++)
            dup = dup || strcmp(s->keys[j].section, s->keys[i].section) == 0;
        if (dup)
            continue;
        int k = snprintf(buf + pos, cap - pos, "%s[%s]", pos ? ", " : "", s->keys[i].section);
        if (k < 0 || (size_t)k >= cap - pos)
            return;
        pos += (size_t)k;
    }
}

/* Line reader handed to ini_parse_stream: one line per call, see the file comment. */
static char *read_line(char *str, int num, void *stream) {
    loader *L = stream;
    if (L->err || L->pos >= L->len)
        return NULL;
    const char *start = L->text + L->pos;
    size_t rest = L->len - L->pos;
    const char *nl = memchr(start, '\n', rest);
    size_t n = nl ? (size_t)(nl - start) : rest;
    L->pos += nl ? n + 1 : n;
    L->lineno++;
    if (memchr(start, '\0', n)) {
        fail(L, FS_EFORMAT, "%s:%d: NUL byte in the line", L->file, L->lineno);
        return NULL;
    }
    if (L->lineno == 1 && n >= 3 && memcmp(start, "\xEF\xBB\xBF", 3) == 0) { /* UTF-8 BOM */
        start += 3;
        n -= 3;
    }
    while (n > 0 && is_blank(start[0])) {
        start++;
        n--;
    }
    while (n > 0 && is_blank(start[n - 1]))
        n--;
    size_t cap = num > 3 ? (size_t)num - 3 : 0; /* room for "\n\0" and libinih's own margin */
    if (cap > FS_CFG_MAX_LINE)
        cap = FS_CFG_MAX_LINE;
    if (n > cap) {
        fail(L, FS_EFORMAT, "%s:%d: line too long (%zu characters, at most %zu)", L->file,
             L->lineno, n, cap);
        return NULL;
    }
    memcpy(L->raw, start, n);
    L->raw[n] = '\0';

    /* Syntax checks libinih would report without detail, or not at all. */
    if (n > 0 && L->raw[0] != '#' && L->raw[0] != ';') {
        if (L->raw[0] == '[') {
            char *close = strchr(L->raw, ']');
            if (!close) {
                fail(L, FS_EFORMAT, "%s:%d: section header without closing ']'", L->file,
                     L->lineno);
                return NULL;
            }
            if (close[1] != '\0') {
                fail(L, FS_EFORMAT,
                     "%s:%d: text after the section header (comments go on their "
                     "own line)",
                     L->file, L->lineno);
                return NULL;
            }
            char sec[FS_CFG_MAX_LINE + 8];
            copy_trimmed(sec, sizeof sec, L->raw + 1, (size_t)(close - L->raw - 1));
            if (!section_known(L->s, sec)) {
                char known[256];
                char ex[80];
                list_sections(L->s, known, sizeof known);
                fail(L, FS_EFORMAT, "%s:%d: [%s]: unknown section (a %s file has %s)", L->file,
                     L->lineno, excerpt(sec, ex, sizeof ex), L->s->name, known);
                return NULL;
            }
        } else {
            size_t k = strcspn(L->raw, "=:");
            if (L->raw[k] == '\0') {
                fail(L, FS_EFORMAT, "%s:%d: expected 'key = value' or '[section]'", L->file,
                     L->lineno);
                return NULL;
            }
            if (k == 0) {
                fail(L, FS_EFORMAT, "%s:%d: missing key name before '%c'", L->file, L->lineno,
                     L->raw[0]);
                return NULL;
            }
        }
    }
    memcpy(str, L->raw, n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a);
    size_t lb = strlen(b);
    if (la > 48 || lb > 48)
        return 99;
    size_t prev[50];
    size_t cur[50];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1;
            size_t ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof cur);
    }
    return prev[lb];
}

static int unknown_key(loader *L, const char *sec, const char *name) {
    char ex[80];
    const fs_cfg_key *near = NULL;
    const fs_cfg_key *other = NULL;
    size_t best = 3;
    for (size_t i = 0; i < L->s->n_keys; i++) {
        const fs_cfg_key *k = &L->s->keys[i];
        if (strcmp(k->key, name) == 0 && strcmp(k->section, sec) != 0)
            other = k;
        if (strcmp(k->section, sec) == 0 && strcmp(k->key, "*") != 0) {
            size_t dist = edit_distance(k->key, name);
            if (dist < best) {
                best = dist;
                near = k;
            }
        }
    }
    excerpt(name, ex, sizeof ex);
    if (other)
        return fail(L, FS_EFORMAT, "%s:%d: [%s] %s: unknown key (it belongs in [%s])", L->file,
                    L->lineno, sec, ex, other->section);
    if (near)
        return fail(L, FS_EFORMAT, "%s:%d: [%s] %s: unknown key (did you mean '%s'?)", L->file,
                    L->lineno, sec, ex, near->key);
    return fail(L, FS_EFORMAT, "%s:%d: [%s] %s: unknown key", L->file, L->lineno, sec, ex);
}

/* Parses `v` for key `k` into `dst` (the field). On error fills `d` with the problem alone. */
static int set_value(const fs_cfg_key *k, const char *v, void *dst, fs_diag *d) {
    char ex[80];
    int rc = 0;
    switch (k->type) {
    case FS_CFG_STRING:
        break;
    case FS_CFG_PATH:
        if (v[0] != '/')
            return fs_diag_set(d, FS_EFORMAT, "'%s' is not an absolute path",
                               excerpt(v, ex, sizeof ex));
        break;
    case FS_CFG_NAME:
        if (!valid_name(v))
            return fs_diag_set(d, FS_EFORMAT,
                               "'%s' is not a valid name (1..%d of A-Z a-z 0-9 . _ -, not "
                               "starting with '.' or '-')",
                               excerpt(v, ex, sizeof ex), FS_CFG_NAME_MAX);
        break;
    case FS_CFG_Z85KEY:
        if (strlen(v) != 40 || strspn(v, z85_alphabet) != 40)
            return fs_diag_set(d, FS_EFORMAT,
                               "'%s' is not a Z85 public key (40 characters from the Z85 alphabet)",
                               excerpt(v, ex, sizeof ex));
        break;
    case FS_CFG_ENDPOINT:
        if ((rc = fs_cfg_check_endpoint(v, d)) != 0)
            return rc;
        break;
    case FS_CFG_INT: {
        errno = 0;
        char *end = NULL;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end != '\0' || errno == ERANGE || isspace((unsigned char)v[0]))
            return fs_diag_set(d, FS_EFORMAT, "'%s' is not an integer", excerpt(v, ex, sizeof ex));
        if ((k->min || k->max) && (x < k->min || x > k->max))
            return fs_diag_set(d, FS_EFORMAT, "%lld is out of range [%" PRId64 ", %" PRId64 "]", x,
                               k->min, k->max);
        *(int64_t *)dst = x;
        return 0;
    }
    case FS_CFG_DOUBLE: {
        errno = 0;
        char *end = NULL;
        double x = strtod(v, &end);
        if (end == v || *end != '\0' || errno == ERANGE || !isfinite(x) ||
            isspace((unsigned char)v[0]))
            return fs_diag_set(d, FS_EFORMAT, "'%s' is not a finite number",
                               excerpt(v, ex, sizeof ex));
        if ((k->dmin != 0 || k->dmax != 0) && (x < k->dmin || x > k->dmax))
            return fs_diag_set(d, FS_EFORMAT, "%g is out of range [%g, %g]", x, k->dmin, k->dmax);
        *(double *)dst = x;
        return 0;
    }
    case FS_CFG_BOOL:
        return fs_cfg_parse_bool(v, (bool *)dst, d);
    case FS_CFG_DURATION:
    case FS_CFG_SIZE: {
        uint64_t x;
        bool dur = k->type == FS_CFG_DURATION;
        if ((rc = dur ? fs_cfg_parse_duration(v, &x, d) : fs_cfg_parse_size(v, &x, d)) != 0)
            return rc;
        if ((k->min || k->max) && (x < (uint64_t)k->min || x > (uint64_t)k->max)) {
            char a[48];
            char b[48];
            char c[48];
            if (dur) {
                fs_cfg_format_duration(x, a, sizeof a);
                fs_cfg_format_duration((uint64_t)k->min, b, sizeof b);
                fs_cfg_format_duration((uint64_t)k->max, c, sizeof c);
            } else {
                fs_cfg_format_size(x, a, sizeof a);
                fs_cfg_format_size((uint64_t)k->min, b, sizeof b);
                fs_cfg_format_size((uint64_t)k->max, c, sizeof c);
            }
            return fs_diag_set(d, FS_EFORMAT, "%s is out of range [%s, %s]", a, b, c);
        }
        *(uint64_t *)dst = x;
        return 0;
    }
    case FS_CFG_ENUM: {
        char list[256];
        size_t pos = 0;
        list[0] = '\0';
        for (int i = 0; k->choices && k->choices[i]; i++) {
            if (strcmp(k->choices[i], v) == 0) {
                *(int *)dst = i;
                return 0;
            }
            int w = snprintf(list + pos, sizeof list - pos, "%s%s", i ? ", " : "", k->choices[i]);
            if (w > 0 && (size_t)w < sizeof list - pos)
                pos += (size_t)w;
        }
        return fs_diag_set(d, FS_EFORMAT, "'%s' is not one of: %s", excerpt(v, ex, sizeof ex),
                           list);
    }
    case FS_CFG_ENTRIES:
        FS_ASSERT(!"entries are handled by add_entry");
    }
    /* string-valued types */
    char *copy = dup_str(v);
    if (!copy)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    char **slot = dst;
    free(*slot);
    *slot = copy;
    return 0;
}

static int add_entry(loader *L, const fs_cfg_key *k, const char *name, const char *v) {
    char ex[80];
    char ex2[80];
    fs_cfg_entries *e = field(L->obj, k);
    if (!valid_name(name))
        return fail(L, FS_EFORMAT,
                    "%s:%d: [%s] %s: not a valid entry name (1..%d of A-Z a-z 0-9 "
                    ". _ -)",
                    L->file, L->lineno, k->section, excerpt(name, ex, sizeof ex), FS_CFG_NAME_MAX);
    for (size_t i = 0; i < e->n; i++) {
        if (strcmp(e->v[i].name, name) == 0)
            return fail(L, FS_EFORMAT, "%s:%d: [%s] %s: duplicate key (first set on line %d)",
                        L->file, L->lineno, k->section, name, e->v[i].line);
    }
    if (k->max && e->n >= (size_t)k->max)
        return fail(L, FS_EFORMAT, "%s:%d: [%s] %s: too many entries (at most %" PRId64 ")",
                    L->file, L->lineno, k->section, name, k->max);
    const char *colon = strchr(v, ':');
    int kind = -1;
    char list[256];
    size_t pos = 0;
    list[0] = '\0';
    for (int i = 0; k->choices[i]; i++) {
        size_t cl = strlen(k->choices[i]);
        if (colon && (size_t)(colon - v) == cl && strncmp(v, k->choices[i], cl) == 0)
            kind = i;
        int w = snprintf(list + pos, sizeof list - pos, "%s%s", i ? ", " : "", k->choices[i]);
        if (w > 0 && (size_t)w < sizeof list - pos)
            pos += (size_t)w;
    }
    if (kind < 0)
        return fail(L, FS_EFORMAT, "%s:%d: [%s] %s: '%s' is not KIND:PATH with KIND one of: %s",
                    L->file, L->lineno, k->section, name, excerpt(v, ex2, sizeof ex2), list);
    const char *path = colon + 1;
    if (path[0] != '/')
        return fail(L, FS_EFORMAT, "%s:%d: [%s] %s: '%s' is not an absolute path", L->file,
                    L->lineno, k->section, name, excerpt(path, ex2, sizeof ex2));
    fs_cfg_entry *nv = realloc(e->v, (e->n + 1) * sizeof *nv);
    if (!nv)
        return fail(L, FS_ENOMEM, "%s:%d: out of memory", L->file, L->lineno);
    e->v = nv;
    fs_cfg_entry *en = &e->v[e->n];
    en->name = dup_str(name);
    en->path = dup_str(path);
    en->kind = kind;
    en->line = L->lineno;
    e->n++; /* counted before the check so fs_cfg_free releases a half-built entry */
    if (!en->name || !en->path)
        return fail(L, FS_ENOMEM, "%s:%d: out of memory", L->file, L->lineno);
    return 0;
}

static int on_pair(void *user, const char *section, const char *name_in, const char *value_in) {
    loader *L = user;
    if (L->err)
        return 1; /* the reader stops at the first error; nothing more to record */
    /* Re-derive name and value from the raw line: the value must be everything after the first
     * '=' or ':' exactly. A difference means libinih removed an inline comment. */
    char name[FS_CFG_MAX_LINE + 8];
    char value[FS_CFG_MAX_LINE + 8];
    size_t k = strcspn(L->raw, "=:");
    copy_trimmed(name, sizeof name, L->raw, k);
    copy_trimmed(value, sizeof value, L->raw + k + (L->raw[k] != '\0'),
                 strlen(L->raw + k + (L->raw[k] != '\0')));
    char ex[80];
    if (strcmp(name, name_in) != 0) {
        fail(L, FS_EFORMAT, "%s:%d: key name '%s' too long", L->file, L->lineno,
             excerpt(name, ex, sizeof ex));
        return 0;
    }
    if (!value_in || strcmp(value, value_in) != 0) {
        fail(L, FS_EFORMAT, "%s:%d: [%s] %s: the INI parser altered the value (inline comment?)",
             L->file, L->lineno, section, name);
        return 0;
    }
    if (section[0] == '\0') {
        fail(L, FS_EFORMAT, "%s:%d: %s: key outside any section (put a [section] header above it)",
             L->file, L->lineno, excerpt(name, ex, sizeof ex));
        return 0;
    }
    for (const char *p = value; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            fail(L, FS_EFORMAT, "%s:%d: [%s] %s: control character in the value", L->file,
                 L->lineno, section, name);
            return 0;
        }
    }
    const fs_cfg_key *key = NULL;
    size_t idx = 0;
    for (size_t i = 0; i < L->s->n_keys; i++) {
        const fs_cfg_key *c = &L->s->keys[i];
        if (strcmp(c->section, section) != 0)
            continue;
        if (strcmp(c->key, name) == 0 || (c->type == FS_CFG_ENTRIES && !key)) {
            key = c;
            idx = i;
        }
    }
    if (!key) {
        unknown_key(L, section, name);
        return 0;
    }
    if (value[0] == '\0') {
        fail(L, FS_EFORMAT, "%s:%d: [%s] %s: empty value (comment the line out to use the default)",
             L->file, L->lineno, section, name);
        return 0;
    }
    if (key->type == FS_CFG_ENTRIES)
        return add_entry(L, key, name, value) == 0;
    if (L->seen[idx]) {
        fail(L, FS_EFORMAT, "%s:%d: [%s] %s: duplicate key (first set on line %d)", L->file,
             L->lineno, section, name, L->seen[idx]);
        return 0;
    }
    fs_diag d = {0};
    if (set_value(key, value, field(L->obj, key), &d) != 0) {
        fail(L, d.code, "%s:%d: [%s] %s: %s", L->file, L->lineno, section, name, d.msg);
        return 0;
    }
    L->seen[idx] = L->lineno;
    return 1;
}

/* "${VAR}rest" → getenv(VAR) + rest; NULL if VAR is unset or empty. Plain defaults are copied. */
static bool expand_default(const char *def, char *out, size_t cap, const char **var) {
    *var = NULL;
    if (strncmp(def, "${", 2) != 0) {
        snprintf(out, cap, "%s", def);
        return true;
    }
    const char *close = strchr(def, '}');
    FS_ASSERT(close && (size_t)(close - def) < 64); /* schema bug */
    char name[64];
    memcpy(name, def + 2, (size_t)(close - def - 2));
    name[close - def - 2] = '\0';
    const char *val = getenv(name);
    *var = def + 2;
    if (!val || !val[0])
        return false;
    return snprintf(out, cap, "%s%s", val, close + 1) < (int)cap;
}

static void finish(loader *L) {
    for (size_t i = 0; i < L->s->n_keys && !L->err; i++) {
        const fs_cfg_key *k = &L->s->keys[i];
        if (k->type == FS_CFG_ENTRIES) {
            fs_cfg_entries *e = field(L->obj, k);
            if (k->min && e->n < (size_t)k->min)
                fail(L, FS_EFORMAT,
                     "%s: [%s]: at least %" PRId64 " entr%s required (NAME = "
                     "KIND:PATH)",
                     L->file, k->section, k->min, k->min == 1 ? "y is" : "ies are");
            continue;
        }
        if (L->seen[i])
            continue;
        char buf[4200];
        const char *var = NULL;
        bool have = k->def && expand_default(k->def, buf, sizeof buf, &var);
        if (have) {
            fs_diag d = {0};
            if (set_value(k, buf, field(L->obj, k), &d) != 0)
                fail(L, d.code, "%s: [%s] %s: default '%s'%s: %s", L->file, k->section, k->key, buf,
                     var ? " (from the environment)" : "", d.msg);
        } else if (k->flags & FS_CFG_REQUIRED) {
            if (var)
                fail(L, FS_EFORMAT,
                     "%s: [%s] %s: missing required key (no default: $%.*s is not "
                     "set)",
                     L->file, k->section, k->key, (int)strcspn(var, "}"), var);
            else
                fail(L, FS_EFORMAT, "%s: [%s] %s: missing required key", L->file, k->section,
                     k->key);
        }
    }
}

#ifdef FS_HAVE_INIH_RUNTIME_OPTIONS
/* Debian's libinih turns the compile-time options into variables. Inline comments are the one
 * that matters: with them on, "key = a ;b" would lose " ;b". */
typedef struct {
    bool inline_comments;
    bool multiline;
    bool stop_on_first;
} inih_opts;

static inih_opts inih_set(void) {
    inih_opts o = {ini_allow_inline_comments, ini_allow_multiline, ini_stop_on_first_error};
    ini_allow_inline_comments = false;
    ini_allow_multiline = false;
    ini_stop_on_first_error = true;
    return o;
}

static void inih_restore(inih_opts o) {
    ini_allow_inline_comments = o.inline_comments;
    ini_allow_multiline = o.multiline;
    ini_stop_on_first_error = o.stop_on_first;
}
#endif

int fs_cfg_load_string(const fs_cfg_schema *s, const char *name, const char *text, size_t len,
                       void *out, fs_diag *d) {
    FS_ASSERT(s && out && s->size > 0);
    loader L = {.s = s, .file = name ? name : "(config)", .text = text, .len = len, .d = d};
    L.obj = calloc(1, s->size);
    L.seen = calloc(s->n_keys ? s->n_keys : 1, sizeof *L.seen);
    if (!L.obj || !L.seen) {
        free(L.obj);
        free(L.seen);
        return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", L.file);
    }
#ifdef FS_HAVE_INIH_RUNTIME_OPTIONS
    inih_opts saved = inih_set();
#endif
    int rc = ini_parse_stream(read_line, &L, on_pair, &L);
#ifdef FS_HAVE_INIH_RUNTIME_OPTIONS
    inih_restore(saved);
#endif
    if (rc > 0)
        fail(&L, FS_EFORMAT, "%s:%d: syntax error", L.file, rc);
    else if (rc < 0)
        fail(&L, FS_ENOMEM, "%s: the INI parser failed (%d)", L.file, rc);
    if (!L.err)
        finish(&L);
    if (!L.err && s->validate) {
        fs_diag vd = {0};
        if (s->validate(L.obj, &vd) != 0)
            fail(&L, vd.code ? vd.code : FS_EFORMAT, "%s: %s", L.file, vd.msg);
    }
    free(L.seen);
    if (L.err) {
        fs_cfg_free(s, L.obj);
        free(L.obj);
        return L.err;
    }
    memcpy(out, L.obj, s->size);
    free(L.obj);
    return 0;
}

int fs_cfg_load_file(const fs_cfg_schema *s, const char *path, void *out, fs_diag *d) {
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = fs_read_file(path, FS_CFG_MAX_FILE, &buf, &len, d);
    if (rc != 0)
        return rc;
    rc = fs_cfg_load_string(s, path, (const char *)buf, len, out, d);
    free(buf);
    return rc;
}

static bool is_string_type(fs_cfg_type t) {
    return t == FS_CFG_STRING || t == FS_CFG_PATH || t == FS_CFG_NAME || t == FS_CFG_Z85KEY ||
           t == FS_CFG_ENDPOINT;
}

void fs_cfg_free(const fs_cfg_schema *s, void *obj) {
    if (!obj)
        return;
    for (size_t i = 0; i < s->n_keys; i++) {
        const fs_cfg_key *k = &s->keys[i];
        if (is_string_type(k->type)) {
            char **p = field(obj, k);
            free(*p);
            *p = NULL;
        } else if (k->type == FS_CFG_ENTRIES) {
            fs_cfg_entries *e = field(obj, k);
            for (size_t j = 0; j < e->n; j++) {
                free(e->v[j].name);
                free(e->v[j].path);
            }
            free(e->v);
            e->v = NULL;
            e->n = 0;
        }
    }
    memset(obj, 0, s->size);
}

static size_t field_size(fs_cfg_type t) {
    switch (t) {
    case FS_CFG_STRING:
    case FS_CFG_PATH:
    case FS_CFG_NAME:
    case FS_CFG_Z85KEY:
    case FS_CFG_ENDPOINT:
        return sizeof(char *);
    case FS_CFG_INT:
        return sizeof(int64_t);
    case FS_CFG_DOUBLE:
        return sizeof(double);
    case FS_CFG_BOOL:
        return sizeof(bool);
    case FS_CFG_DURATION:
    case FS_CFG_SIZE:
        return sizeof(uint64_t);
    case FS_CFG_ENUM:
        return sizeof(int);
    case FS_CFG_ENTRIES:
        return sizeof(fs_cfg_entries);
    }
    FS_ASSERT(!"unknown config type");
    return 0;
}

typedef struct {
    const fs_cfg_schema *s;
    void *cur;
    void *next;
    fs_cfg_change_cb cb;
    void *ud;
} reload_ctx;

static void on_reload_change(const fs_cfg_key *k, void *ud) {
    reload_ctx *r = ud;
    bool applied = !(k->flags & FS_CFG_RESTART);
    if (!applied) {
        /* swap, so the result keeps the running value and the new one is freed with the old
         * struct (strings and entry arrays move by pointer) */
        unsigned char tmp[sizeof(fs_cfg_entries) > 8 ? sizeof(fs_cfg_entries) : 8];
        size_t n = field_size(k->type);
        FS_ASSERT(n <= sizeof tmp);
        memcpy(tmp, (char *)r->cur + k->offset, n);
        memcpy((char *)r->cur + k->offset, (char *)r->next + k->offset, n);
        memcpy((char *)r->next + k->offset, tmp, n);
    }
    if (r->cb)
        r->cb(k, applied, r->ud);
}

int fs_cfg_reload(const fs_cfg_schema *s, const char *path, void *cur, fs_cfg_change_cb cb,
                  void *ud, fs_diag *d) {
    void *next = calloc(1, s->size);
    if (!next)
        return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", path);
    int rc = fs_cfg_load_file(s, path, next, d);
    if (rc != 0) {
        free(next);
        return rc;
    }
    /* keys kept at their running value cannot break the cross-key checks of the new file unless
     * a check mixes restart and reload keys; check again rather than assume */
    if (s->validate) {
        void *merged = malloc(s->size);
        if (!merged) {
            fs_cfg_free(s, next);
            free(next);
            return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", path);
        }
        memcpy(merged, next, s->size);
        for (size_t i = 0; i < s->n_keys; i++) {
            const fs_cfg_key *k = &s->keys[i];
            if (k->flags & FS_CFG_RESTART)
                memcpy((char *)merged + k->offset, (char *)cur + k->offset, field_size(k->type));
        }
        fs_diag vd = {0};
        rc = s->validate(merged, &vd);
        free(merged); /* shallow copy: owns nothing */
        if (rc != 0) {
            fs_cfg_free(s, next);
            free(next);
            return fs_diag_set(d, FS_EFORMAT, "%s: %s (with the values that need a restart kept)",
                               path, vd.msg);
        }
    }
    reload_ctx r = {s, cur, next, cb, ud};
    fs_cfg_diff(s, cur, next, on_reload_change, &r);
    /* now `next` holds the result and `cur` the values to drop */
    fs_cfg_free(s, cur);
    memcpy(cur, next, s->size);
    free(next);
    return 0;
}

/* One "key = value" line; without the blanks when the line would otherwise be too long. */
static void write_pair(FILE *f, const char *key, const char *prefix, const char *value) {
    size_t n = strlen(key) + strlen(prefix) + strlen(value);
    fprintf(f, n + 3 > FS_CFG_MAX_LINE ? "%s=%s%s\n" : "%s = %s%s\n", key, prefix, value);
}

int fs_cfg_write(const fs_cfg_schema *s, const void *obj, FILE *f) {
    for (size_t i = 0; i < s->n_keys; i++) {
        const fs_cfg_key *k = &s->keys[i];
        if (i == 0 || strcmp(s->keys[i - 1].section, k->section) != 0)
            fprintf(f, "%s[%s]\n", i ? "\n" : "", k->section);
        const void *fp = (const char *)obj + k->offset;
        char buf[64];
        switch (k->type) {
        case FS_CFG_STRING:
        case FS_CFG_PATH:
        case FS_CFG_NAME:
        case FS_CFG_Z85KEY:
        case FS_CFG_ENDPOINT:
            if (*(char *const *)fp)
                write_pair(f, k->key, "", *(char *const *)fp);
            break;
        case FS_CFG_INT:
            snprintf(buf, sizeof buf, "%" PRId64, *(const int64_t *)fp);
            write_pair(f, k->key, "", buf);
            break;
        case FS_CFG_DOUBLE:
            snprintf(buf, sizeof buf, "%.17g", *(const double *)fp);
            write_pair(f, k->key, "", buf);
            break;
        case FS_CFG_BOOL:
            write_pair(f, k->key, "", *(const bool *)fp ? "yes" : "no");
            break;
        case FS_CFG_DURATION:
            fs_cfg_format_duration(*(const uint64_t *)fp, buf, sizeof buf);
            write_pair(f, k->key, "", buf);
            break;
        case FS_CFG_SIZE:
            fs_cfg_format_size(*(const uint64_t *)fp, buf, sizeof buf);
            write_pair(f, k->key, "", buf);
            break;
        case FS_CFG_ENUM: {
            int idx = *(const int *)fp;
            FS_ASSERT(k->choices && idx >= 0);
            write_pair(f, k->key, "", k->choices[idx]);
            break;
        }
        case FS_CFG_ENTRIES: {
            const fs_cfg_entries *e = fp;
            for (size_t j = 0; j < e->n; j++) {
                char kind[64];
                snprintf(kind, sizeof kind, "%s:", k->choices[e->v[j].kind]);
                write_pair(f, e->v[j].name, kind, e->v[j].path);
            }
            break;
        }
        }
    }
    return ferror(f) ? FS_EIO : 0;
}

static bool str_eq(const char *a, const char *b) {
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

size_t fs_cfg_diff(const fs_cfg_schema *s, const void *a, const void *b,
                   void (*cb)(const fs_cfg_key *key, void *ud), void *ud) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_keys; i++) {
        const fs_cfg_key *k = &s->keys[i];
        const void *fa = (const char *)a + k->offset;
        const void *fb = (const char *)b + k->offset;
        bool same = true;
        switch (k->type) {
        case FS_CFG_STRING:
        case FS_CFG_PATH:
        case FS_CFG_NAME:
        case FS_CFG_Z85KEY:
        case FS_CFG_ENDPOINT:
            same = str_eq(*(char *const *)fa, *(char *const *)fb);
            break;
        case FS_CFG_INT:
            same = *(const int64_t *)fa == *(const int64_t *)fb;
            break;
        case FS_CFG_DOUBLE:
            same = *(const double *)fa == *(const double *)fb;
            break;
        case FS_CFG_BOOL:
            same = *(const bool *)fa == *(const bool *)fb;
            break;
        case FS_CFG_DURATION:
        case FS_CFG_SIZE:
            same = *(const uint64_t *)fa == *(const uint64_t *)fb;
            break;
        case FS_CFG_ENUM:
            same = *(const int *)fa == *(const int *)fb;
            break;
        case FS_CFG_ENTRIES: {
            const fs_cfg_entries *ea = fa;
            const fs_cfg_entries *eb = fb;
            same = ea->n == eb->n;
            for (size_t j = 0; same && j < ea->n; j++)
                same = ea->v[j].kind == eb->v[j].kind && str_eq(ea->v[j].name, eb->v[j].name) &&
                       str_eq(ea->v[j].path, eb->v[j].path);
            break;
        }
        }
        if (!same) {
            n++;
            if (cb)
                cb(k, ud);
        }
    }
    return n;
}

int fs_limits_validate(const fs_limits_config *l, fs_diag *d) {
    if (l->max_message < l->chunk_size + 4 * FS_KIB) {
        char a[32];
        char b[32];
        fs_cfg_format_size(l->max_message, a, sizeof a);
        fs_cfg_format_size(l->chunk_size, b, sizeof b);
        return fs_diag_set(d, FS_EFORMAT,
                           "[limits] max_message: %s must exceed chunk_size (%s) by at least 4KiB",
                           a, b);
    }
    return 0;
}
