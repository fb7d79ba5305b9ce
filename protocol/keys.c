/*
 * keys.c — CURVE key pairs on disk (fs_keys_generate / fs_keys_load_*), Z85 conversion, and the
 * allow-list parser plus its rwlock-protected, reloadable container. Secrets are wiped with
 * sodium_memzero after use; secret files looser than 0600 are refused.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "fs_keys.h"
#include "protocol_internal.h"

_Static_assert(FS_KEY_BYTES == crypto_box_PUBLICKEYBYTES, "CURVE keys are Curve25519");
_Static_assert(FS_KEY_BYTES == crypto_box_SECRETKEYBYTES, "CURVE keys are Curve25519");

#define SECRET_HEADER "# fedslim curve secret key v1"
#define PUBLIC_HEADER "# fedslim curve public key v1"

static const char Z85_CHARS[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/* Strict Z85 decoder: exactly 40 characters of the alphabet, no 5-char group above 2^32-1. */
int fs_key_from_z85(const char *z85, size_t len, fs_key out)
{
    if (len != FS_KEY_Z85_LEN)
        return FS_EFORMAT;
    for (size_t g = 0; g < FS_KEY_Z85_LEN / 5; g++) {
        uint64_t v = 0;
        for (size_t i = 0; i < 5; i++) {
            char c = z85[g * 5 + i];
            const char *p = c ? memchr(Z85_CHARS, c, 85) : NULL;
            if (!p)
                return FS_EFORMAT;
            v = v * 85 + (uint64_t)(p - Z85_CHARS);
        }
        if (v > UINT32_MAX)
            return FS_EFORMAT;
        out[g * 4 + 0] = (uint8_t)(v >> 24);
        out[g * 4 + 1] = (uint8_t)(v >> 16);
        out[g * 4 + 2] = (uint8_t)(v >> 8);
        out[g * 4 + 3] = (uint8_t)v;
    }
    return 0;
}

void fs_key_to_z85(const fs_key key, char out[41])
{
    FS_ASSERT(zmq_z85_encode(out, key, FS_KEY_BYTES) != NULL);
}

/* ---- key files ----------------------------------------------------------------------------- */

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t k = write(fd, buf, len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += k;
        len -= (size_t)k;
    }
    return 0;
}

static int write_key_file(const char *path, mode_t mode, const char *header, const char *z85,
                          fs_diag *d)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return fs_diag_errno(d, FS_EIO, "%s: cannot create", path);
    char buf[128];
    int n = snprintf(buf, sizeof buf, "%s\n%s\n", header, z85);
    /* the umask may have narrowed `mode`; public files should still be 0644, secrets stay 0600 */
    int rc = write_all(fd, buf, (size_t)n) || fchmod(fd, mode) || fsync(fd);
    sodium_memzero(buf, sizeof buf);
    if (rc) {
        fs_diag_errno(d, FS_EIO, "%s: cannot write", path);
        close(fd);
        unlink(path);
        return FS_EIO;
    }
    if (close(fd) != 0) {
        unlink(path);
        return fs_diag_errno(d, FS_EIO, "%s: cannot write", path);
    }
    return 0;
}

int fs_keys_generate(const char *dir, const char *name, char pub_z85[41], fs_diag *d)
{
    if (!fs_wire_name_ok(name, strlen(name), 64))
        return fs_diag_set(d, FS_EINVAL, "key name '%s': not 1-64 chars of [A-Za-z0-9._-]", name);
    if (sodium_init() < 0)
        return fs_diag_set(d, FS_ESYS, "libsodium initialisation failed");
    char sec_path[4096], pub_path[4096];
    if (snprintf(sec_path, sizeof sec_path, "%s/%s.key", dir, name) >= (int)sizeof sec_path ||
        snprintf(pub_path, sizeof pub_path, "%s/%s.pub", dir, name) >= (int)sizeof pub_path)
        return fs_diag_set(d, FS_EINVAL, "%s: path too long", dir);
    /* refuse before creating anything, so a failure leaves no half pair */
    if (access(pub_path, F_OK) == 0)
        return fs_diag_set(d, FS_EIO, "%s: already exists (not overwritten)", pub_path);
    fs_key pk, sk;
    char pz[41], sz[41];
    crypto_box_keypair(pk, sk);
    fs_key_to_z85(pk, pz);
    fs_key_to_z85(sk, sz);
    sodium_memzero(sk, sizeof sk);
    int rc = write_key_file(sec_path, 0600, SECRET_HEADER, sz, d);
    sodium_memzero(sz, sizeof sz);
    if (rc)
        return rc;
    if ((rc = write_key_file(pub_path, 0644, PUBLIC_HEADER, pz, d))) {
        unlink(sec_path);
        return rc;
    }
    if (pub_z85)
        memcpy(pub_z85, pz, 41);
    return 0;
}

/* Reads "HEADER\nZ85\n" (trailing newline optional, CRLF tolerated) from an open fd. */
static int parse_key_fd(int fd, const char *path, const char *header, fs_key out, fs_diag *d)
{
    char buf[256];
    size_t len = 0;
    int rc = 0;
    for (;;) {
        ssize_t k = read(fd, buf + len, sizeof buf - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            rc = fs_diag_errno(d, FS_EIO, "%s: cannot read", path);
            goto out;
        }
        if (k == 0)
            break;
        len += (size_t)k;
        if (len == sizeof buf) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: too large for a key file", path);
            goto out;
        }
    }
    size_t hl = strlen(header);
    if (len < hl + 1 || memcmp(buf, header, hl) != 0 || (buf[hl] != '\n' && buf[hl] != '\r')) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: line 1: expected '%s'", path, header);
        goto out;
    }
    size_t p = hl + (buf[hl] == '\r' ? 2 : 1);
    size_t e = p;
    while (e < len && buf[e] != '\n' && buf[e] != '\r')
        e++;
    size_t rest = e;
    while (rest < len && (buf[rest] == '\n' || buf[rest] == '\r'))
        rest++;
    if (rest != len || fs_key_from_z85(buf + p, e - p, out) != 0)
        rc = fs_diag_set(d, FS_EFORMAT, "%s: line 2: expected one 40-character Z85 key", path);
out:
    sodium_memzero(buf, sizeof buf);
    return rc;
}

int fs_keys_load_secret(const char *path, fs_key secret, fs_key pub, fs_diag *d)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fs_diag_errno(d, FS_EIO, "%s: cannot open secret key", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return fs_diag_errno(d, FS_EIO, "%s: cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fs_diag_set(d, FS_EIO, "%s: not a regular file", path);
    }
    /* systemd's credentials directory is private to the unit; on its tmpfs fallback the key is
       shared with the unit's user through an ACL, which shows as group bits (0440). There, only
       "other" bits are refused. */
    mode_t refuse = 077;
    const char *cred = getenv("CREDENTIALS_DIRECTORY");
    size_t cl = cred ? strlen(cred) : 0;
    if (cl && !strncmp(path, cred, cl) && path[cl] == '/')
        refuse = 007;
    if (st.st_mode & refuse) {
        close(fd);
        return fs_diag_set(d, FS_EAUTH,
                           "%s: secret key is readable by group/other (mode %04o); "
                           "chmod 600 it",
                           path, (unsigned)(st.st_mode & 07777));
    }
    int rc = parse_key_fd(fd, path, SECRET_HEADER, secret, d);
    close(fd);
    if (rc == 0 && pub)
        crypto_scalarmult_base(pub, secret);
    return rc;
}

int fs_keys_load_public(const char *path, fs_key pub, fs_diag *d)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fs_diag_errno(d, FS_EIO, "%s: cannot open public key", path);
    int rc = parse_key_fd(fd, path, PUBLIC_HEADER, pub, d);
    close(fd);
    return rc;
}

/* ---- allow-list ---------------------------------------------------------------------------- */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

int fs_allowlist_parse(const char *text, size_t len, const char *source, fs_allow_entry **out,
                       size_t *n_out, fs_diag *d)
{
    fs_allow_entry *e = NULL;
    size_t n = 0, cap = 0, line = 0, pos = 0;
    int rc = 0;
    while (pos < len) {
        line++;
        size_t end = pos;
        while (end < len && text[end] != '\n')
            end++;
        size_t p = pos;
        pos = end < len ? end + 1 : end;
        while (p < end && is_blank(text[p]))
            p++;
        if (p == end || text[p] == '#')
            continue;
        size_t name0 = p;
        while (p < end && !is_blank(text[p]))
            p++;
        size_t name_len = p - name0;
        while (p < end && is_blank(text[p]))
            p++;
        size_t key0 = p;
        while (p < end && !is_blank(text[p]))
            p++;
        size_t key_len = p - key0;
        while (p < end && is_blank(text[p]))
            p++;
        if (memchr(text + name0, '\0', end - name0)) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s:%zu: NUL byte in line", source, line);
            goto fail;
        }
        if (!fs_wire_name_ok(text + name0, name_len, 64)) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s:%zu: name '%.*s' is not 1-64 chars of "
                             "[A-Za-z0-9._-]", source, line, (int)(name_len > 64 ? 64 : name_len),
                             text + name0);
            goto fail;
        }
        if (key_len == 0 || p != end) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s:%zu: expected 'NAME Z85KEY'", source, line);
            goto fail;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            fs_allow_entry *ne = realloc(e, nc * sizeof *ne);
            if (!ne) {
                rc = fs_diag_set(d, FS_ENOMEM, "%s: out of memory", source);
                goto fail;
            }
            e = ne;
            cap = nc;
        }
        fs_allow_entry *x = &e[n];
        memcpy(x->name, text + name0, name_len);
        x->name[name_len] = '\0';
        if (fs_key_from_z85(text + key0, key_len, x->key) != 0) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s:%zu: key of '%s' is not 40 characters of Z85",
                             source, line, x->name);
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            if (!strcmp(e[i].name, x->name)) {
                rc = fs_diag_set(d, FS_EFORMAT, "%s:%zu: duplicate name '%s'", source, line,
                                 x->name);
                goto fail;
            }
            if (!memcmp(e[i].key, x->key, FS_KEY_BYTES)) {
                rc = fs_diag_set(d, FS_EFORMAT, "%s:%zu: key of '%s' already listed for '%s'",
                                 source, line, x->name, e[i].name);
                goto fail;
            }
        }
        n++;
    }
    *out = e;
    *n_out = n;
    return 0;
fail:
    free(e);
    return rc;
}

struct fs_allowlist {
    pthread_rwlock_t lock;
    char *path;
    fs_allow_entry *e;
    size_t n;
};

static int load_file(const char *path, fs_allow_entry **e, size_t *n, fs_diag *d)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = fs_read_file(path, (size_t)1 << 20, &buf, &len, d);
    if (rc)
        return rc;
    rc = fs_allowlist_parse((const char *)buf, len, path, e, n, d);
    free(buf);
    return rc;
}

int fs_allowlist_open(fs_allowlist **out, const char *path, fs_diag *d)
{
    *out = NULL;
    fs_allowlist *al = calloc(1, sizeof *al);
    if (!al || !(al->path = strdup(path))) {
        free(al);
        return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", path);
    }
    int rc = load_file(path, &al->e, &al->n, d);
    if (rc) {
        free(al->path);
        free(al);
        return rc;
    }
    pthread_rwlock_init(&al->lock, NULL);
    *out = al;
    return 0;
}

int fs_allowlist_reload(fs_allowlist *al, size_t *removed, fs_diag *d)
{
    fs_allow_entry *e = NULL;
    size_t n = 0;
    int rc = load_file(al->path, &e, &n, d);
    if (rc)
        return rc; /* keep the current list */
    pthread_rwlock_wrlock(&al->lock);
    size_t gone = 0;
    for (size_t i = 0; i < al->n; i++) {
        bool found = false;
        for (size_t j = 0; j < n && !found; j++)
            found = !strcmp(al->e[i].name, e[j].name) && !memcmp(al->e[i].key, e[j].key, 32);
        gone += !found;
    }
    fs_allow_entry *old = al->e;
    al->e = e;
    al->n = n;
    pthread_rwlock_unlock(&al->lock);
    free(old);
    if (removed)
        *removed = gone;
    return 0;
}

int fs_allowlist_lookup(fs_allowlist *al, const fs_key key, char *name, size_t name_len)
{
    int rc = FS_ENOTFOUND;
    pthread_rwlock_rdlock(&al->lock);
    for (size_t i = 0; i < al->n; i++) {
        if (sodium_memcmp(al->e[i].key, key, FS_KEY_BYTES) == 0) {
            snprintf(name, name_len, "%s", al->e[i].name);
            rc = 0;
            break;
        }
    }
    pthread_rwlock_unlock(&al->lock);
    return rc;
}

bool fs_allowlist_has_name(fs_allowlist *al, const char *name)
{
    bool found = false;
    pthread_rwlock_rdlock(&al->lock);
    for (size_t i = 0; i < al->n && !found; i++)
        found = !strcmp(al->e[i].name, name);
    pthread_rwlock_unlock(&al->lock);
    return found;
}

size_t fs_allowlist_count(fs_allowlist *al)
{
    pthread_rwlock_rdlock(&al->lock);
    size_t n = al->n;
    pthread_rwlock_unlock(&al->lock);
    return n;
}

const char *fs_allowlist_path(const fs_allowlist *al)
{
    return al->path;
}

void fs_allowlist_free(fs_allowlist *al)
{
    if (!al)
        return;
    pthread_rwlock_destroy(&al->lock);
    free(al->e);
    free(al->path);
    free(al);
}
