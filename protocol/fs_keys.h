/*
 * fs_keys.h — CURVE key files and the agent allow-list.
 *
 * Key files (made by `fedslim keygen --out DIR/NAME`):
 *   NAME.key  mode 0600, created with O_EXCL:   "# fedslim curve secret key v1\n<40 Z85 chars>\n"
 *   NAME.pub  mode 0644:                        "# fedslim curve public key v1\n<40 Z85 chars>\n"
 * A secret key file readable by group or other is refused (STYLE C13).
 *
 * Allow-list file: one "NAME Z85KEY" per line (NAME = 1-64 chars [A-Za-z0-9._-], the ZAP User-Id);
 * blank lines; '#' starts a comment only as the first non-blank character of a line (Z85 contains
 * '#'). Duplicate names or keys, bad Z85, or any other malformed line rejects the whole file and the
 * error names the line.
 */
#ifndef FS_KEYS_H
#define FS_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs_util.h"

#define FS_KEY_BYTES 32
#define FS_KEY_Z85_LEN 40
typedef uint8_t fs_key[FS_KEY_BYTES];

/* Creates DIR/NAME.key (0600, O_EXCL: never overwrites) and DIR/NAME.pub. name: [A-Za-z0-9._-].
 * On success, if pub_z85 is not NULL it receives the public key (41 bytes incl. NUL). */
FS_MUST_CHECK int fs_keys_generate(const char *dir, const char *name, char pub_z85[41],
                                   fs_diag *d);

/* Loads a secret key file; refuses mode & 077 (the error names the file and its mode). `pub`
 * (may be NULL) receives the matching public key. The caller wipes `secret` with sodium_memzero
 * when done. 0, FS_EAUTH (mode), FS_EIO, FS_EFORMAT. */
FS_MUST_CHECK int fs_keys_load_secret(const char *path, fs_key secret, fs_key pub, fs_diag *d);

/* Loads a public key file (the format above). 0, FS_EIO, FS_EFORMAT. */
FS_MUST_CHECK int fs_keys_load_public(const char *path, fs_key pub, fs_diag *d);

/* Z85 text (exactly 40 chars, not NUL-terminated needed: len given) -> 32 bytes. 0 or FS_EFORMAT. */
int fs_key_from_z85(const char *z85, size_t len, fs_key out);
void fs_key_to_z85(const fs_key key, char out[41]);

/* ---- allow-list ---------------------------------------------------------------------------- */

typedef struct {
    char name[65];
    fs_key key;
} fs_allow_entry;

/* Parses allow-list text (not NUL-terminated; `source` names it in errors). On success *out is a
 * malloc'd array of *n entries (returns owned: free()). 0 or FS_EFORMAT ("source:LINE: problem"). */
FS_MUST_CHECK int fs_allowlist_parse(const char *text, size_t len, const char *source,
                                     fs_allow_entry **out, size_t *n, fs_diag *d);

/* A loaded allow-list shared between the ZAP thread (lookups) and the daemon's loop (reloads):
 * the entries are swapped under a rwlock, so lookups and reloads may run on different threads. */
typedef struct fs_allowlist fs_allowlist;

/* Reads and parses `path` (<= 1 MiB). returns owned: fs_allowlist_free. */
FS_MUST_CHECK int fs_allowlist_open(fs_allowlist **out, const char *path, fs_diag *d);
/* Re-reads the file; on any error keeps the current list (and returns the error). On success
 * *removed (may be NULL) is the number of old entries (name+key) no longer present. */
FS_MUST_CHECK int fs_allowlist_reload(fs_allowlist *al, size_t *removed, fs_diag *d);
/* Name for a key: 0 and the name copied (<= name_len-1 chars), or FS_ENOTFOUND. Thread-safe. */
int fs_allowlist_lookup(fs_allowlist *al, const fs_key key, char *name, size_t name_len);
/* true if `name` is in the current list. Thread-safe. */
bool fs_allowlist_has_name(fs_allowlist *al, const char *name);
size_t fs_allowlist_count(fs_allowlist *al);
const char *fs_allowlist_path(const fs_allowlist *al);
void fs_allowlist_free(fs_allowlist *al);

#endif
