/*
 * fs_config.h — schema-driven INI configuration for the fedslim daemons (DESIGN "Daemon plumbing").
 *
 * A schema is a table of keys: {section, key, type, default, flags, offset into the caller's
 * struct, range or choices, one-line doc}. The loader (config.c, on libinih) parses a file into a
 * FRESH struct, applies defaults, checks every value and every required key, and copies the result
 * to the caller only when everything is valid. Errors read "FILE:LINE: [section] key: problem"
 * (missing keys: "FILE: [section] key: missing required key"). Unknown sections and keys, duplicate
 * keys, empty values and lines the INI syntax cannot parse are all errors.
 *
 * Syntax accepted: "[section]" headers, "key = value" lines, comments only on lines whose first
 * non-blank character is '#' or ';'. Everything after the first '=' (trimmed) is the value, taken
 * literally: no quotes, no escapes, no inline comments, so `key = abc#def ;x` is "abc#def ;x"
 * (Z85 keys contain '#'). Leading blanks are ignored (no multi-line continuation values). Lines are
 * limited to FS_CFG_MAX_LINE characters; files to FS_CFG_MAX_FILE bytes.
 *
 * Reload: load the new file into a new struct; on success free the old one and swap; on error keep
 * the old one (nothing of it was touched). fs_cfg_diff lists what changed so the caller can log
 * keys flagged FS_CFG_RESTART ("takes effect after a restart").
 *
 * Thread-safety: loading uses libinih's process-wide option variables (Debian's libinih exposes
 * them) and restores them afterwards: load configurations from one thread at a time (the main
 * thread). Loaded structs are plain data: read them from any thread once published.
 */
#ifndef FS_CONFIG_H
#define FS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "fs_util.h"

#define FS_CFG_MAX_LINE 196        /* characters per line, without the newline (libinih limit) */
#define FS_CFG_MAX_FILE (1u << 20) /* bytes per file */
#define FS_CFG_MAX_ENTRIES 64      /* entries in one FS_CFG_ENTRIES section */
#define FS_CFG_NAME_MAX 64         /* FS_CFG_NAME values and entry names */

/* Value types and the C type each one stores at `offset` in the caller's struct. */
typedef enum {
    FS_CFG_STRING = 1, /* char * (owned), any non-empty text */
    FS_CFG_PATH,       /* char * (owned), an absolute path */
    FS_CFG_NAME,       /* char * (owned), 1..64 of [A-Za-z0-9._-], not starting with '.' or '-' */
    FS_CFG_Z85KEY,     /* char * (owned), a CURVE public key: exactly 40 Z85 characters */
    FS_CFG_ENDPOINT,   /* char * (owned), "tcp://HOST:PORT" (HOST: name, IPv4, [IPv6] or *) or
                          "ipc:///abs/path" / "ipc://@abstract" */
    FS_CFG_INT,        /* int64_t, decimal, within [min, max] */
    FS_CFG_DOUBLE,     /* double, finite, within [dmin, dmax] */
    FS_CFG_BOOL,       /* bool: yes/no, true/false, on/off, 1/0 (any case) */
    FS_CFG_DURATION,   /* uint64_t microseconds: "30s", "500ms", "1min 30s", "2h", "100us"; a
                          bare number is an error (which unit?); within [min, max] µs */
    FS_CFG_SIZE,       /* uint64_t bytes: "4MiB", "512KiB", "64 KiB", "1G" (binary), "10MB"
                          (decimal), "4096" (bytes); within [min, max] bytes */
    FS_CFG_ENUM,       /* int: index into `choices` (exact, case-sensitive match) */
    FS_CFG_ENTRIES,    /* fs_cfg_entries: every key of the section is an entry
                          "NAME = KIND:PATH" with KIND from `choices`, NAME as FS_CFG_NAME and
                          PATH absolute; `min`/`max` bound the number of entries */
} fs_cfg_type;

enum {
    FS_CFG_REQUIRED = 1u << 0, /* no usable default: the file must set it */
    FS_CFG_RESTART = 1u << 1,  /* a reload cannot apply it: the daemon must restart */
};

typedef struct fs_cfg_key {
    const char *section;
    const char *key; /* FS_CFG_ENTRIES: "*" (any key of the section) */
    fs_cfg_type type;
    /* Default as text, parsed like a value from the file. NULL: no default (the field stays
     * NULL/0/false). A default starting with "${VAR}" expands VAR from the environment; when VAR
     * is unset or empty the key has no default. */
    const char *def;
    unsigned flags;             /* FS_CFG_REQUIRED, FS_CFG_RESTART */
    size_t offset;              /* offsetof(struct, field) */
    int64_t min, max;           /* INT, DURATION (µs), SIZE (bytes), ENTRIES (count); 0,0 = none */
    double dmin, dmax;          /* DOUBLE */
    const char *const *choices; /* ENUM and ENTRIES kinds: NULL-terminated */
    const char *doc;            /* one line, for docs and --help */
} fs_cfg_key;

typedef struct {
    const char *name; /* "coordinator", "agent": for messages */
    size_t size;      /* sizeof the caller's struct */
    const fs_cfg_key *keys;
    size_t n_keys;
    /* Checks between keys, run after every key is set (NULL: none). Returns 0 or FS_EFORMAT
     * with d->msg = "[section] key: problem"; the loader prefixes "FILE: ". */
    int (*validate)(const void *obj, fs_diag *d);
} fs_cfg_schema;

/* One "NAME = KIND:PATH" line of an FS_CFG_ENTRIES section. */
typedef struct {
    char *name; /* owned */
    int kind;   /* index into the key's `choices` */
    char *path; /* owned, absolute */
    int line;   /* line of the file it came from */
} fs_cfg_entry;

typedef struct {
    fs_cfg_entry *v; /* owned array of n */
    size_t n;
} fs_cfg_entries;

/* Loads the INI file `path` into `out` (a struct of schema->size bytes).
 * On 0, `out` holds the new configuration (returns owned strings: release with fs_cfg_free);
 * its previous content is overwritten WITHOUT being freed (pass a fresh struct; for a reload,
 * load into a new struct, then free the old one and swap).
 * On error `out` is untouched and `d` holds "FILE:LINE: [section] key: problem".
 * Errors: FS_EIO (cannot read), FS_EFORMAT (syntax, unknown/duplicate/missing key, bad value),
 * FS_ENOMEM. Thread: one loader at a time (see the file comment). */
FS_MUST_CHECK int fs_cfg_load_file(const fs_cfg_schema *s, const char *path, void *out, fs_diag *d);

/* Same from memory: `text` of `len` bytes (need not be NUL-terminated); `name` is used in
 * messages in place of a file name. */
FS_MUST_CHECK int fs_cfg_load_string(const fs_cfg_schema *s, const char *name, const char *text,
                                     size_t len, void *out, fs_diag *d);

/* Frees every owned string and entry array of `obj` and zeroes it. NULL-safe. */
void fs_cfg_free(const fs_cfg_schema *s, void *obj);

/* Calls cb(key, ud) for every schema key whose value differs between `a` and `b`
 * (both loaded with `s`). Returns the number of differing keys. Borrows everything. */
size_t fs_cfg_diff(const fs_cfg_schema *s, const void *a, const void *b,
                   void (*cb)(const fs_cfg_key *key, void *ud), void *ud);

/* Reload in one call: loads `path` into a new struct; on error returns it and leaves `cur`
 * untouched. On success, for every key whose value changed calls cb(key, applied, ud): keys
 * flagged FS_CFG_RESTART keep their OLD value in the result (applied = false: the running daemon
 * still uses the old one; log "takes effect after a restart"), the others take the new value
 * (applied = true). Then frees the old values and stores the result in `cur`. Returns 0,
 * FS_EIO, FS_EFORMAT or FS_ENOMEM; `cb` may be NULL. Thread: as fs_cfg_load_file. */
typedef void (*fs_cfg_change_cb)(const fs_cfg_key *key, bool applied, void *ud);
FS_MUST_CHECK int fs_cfg_reload(const fs_cfg_schema *s, const char *path, void *cur,
                                fs_cfg_change_cb cb, void *ud, fs_diag *d);

/* Writes `obj` as an INI file that loads back to an equal configuration (fs_cfg_diff == 0): every
 * section, every key that has a value, durations/sizes in units ("1min 30s", "4MiB"). For
 * `--print-config` and tests. 0 or FS_EIO. Borrows everything. */
FS_MUST_CHECK int fs_cfg_write(const fs_cfg_schema *s, const void *obj, FILE *f);

/* Value parsers used by the loader, exported for the CLI and tests. 0 or FS_EFORMAT; `d` gets
 * the problem alone (e.g. "'4Mb' is not a size: unknown unit 'Mb' (B, KiB, MiB, GiB, TiB, kB, MB,
 * GB, TB)"); the loader prefixes file, line, section and key. Out-params written on success only.
 */
FS_MUST_CHECK int fs_cfg_parse_duration(const char *s, uint64_t *usec, fs_diag *d);
FS_MUST_CHECK int fs_cfg_parse_size(const char *s, uint64_t *bytes, fs_diag *d);
FS_MUST_CHECK int fs_cfg_parse_bool(const char *s, bool *v, fs_diag *d);
FS_MUST_CHECK int fs_cfg_check_endpoint(const char *s, fs_diag *d);

/* Formats a duration ("1min 30s", "250ms", "0") or size ("4MiB", "1536B") for messages/docs. */
void fs_cfg_format_duration(uint64_t usec, char *buf, size_t cap);
void fs_cfg_format_size(uint64_t bytes, char *buf, size_t cap);

/* ------------------------------------------------------------------------------------------ */
/* The two daemons' configurations (schemas in config_coordinator.c and config_agent.c).        */

/* log_level choices, in this order; the value is the index (0 = error ... 4 = debug). Use
 * fs_cfg_log_level() to map it to FS_LOG_*. */
extern const char *const fs_cfg_log_levels[];
int fs_cfg_log_level(int index);

/* [limits], shared by both daemons. */
typedef struct {
    uint64_t chunk_size;         /* bytes per tensor chunk on the wire */
    uint64_t max_message;        /* bytes: ZMQ_MAXMSGSIZE and the decoder's ceiling */
    int64_t max_frames;          /* frames per multipart message */
    int64_t max_protocol_errors; /* per peer and round before it is quarantined */
} fs_limits_config;

typedef struct fs_coord_config {
    /* [coordinator] */
    char *listen;         /* endpoint, required */
    char *secret_key;     /* path; default $CREDENTIALS_DIRECTORY/coordinator.key */
    char *public_key;     /* Z85 or NULL */
    char *allow_list;     /* path */
    char *state_dir;      /* path */
    char *control_socket; /* path */
    char *control_group;  /* group name */
    int64_t threads;
    int log_level; /* index into fs_cfg_log_levels */
    /* [limits] */
    fs_limits_config limits;
    /* [jobs] */
    int64_t default_quorum;      /* 0 = every agent the job names */
    uint64_t step_timeout;       /* µs */
    uint64_t heartbeat_interval; /* µs */
    bool checkpoint;
} fs_coord_config;

/* Dataset kinds of the agent's [data] entries (index into fs_agent_dataset_kinds). */
enum { FS_DATASET_IDX = 0, FS_DATASET_FOLDER = 1, FS_DATASET_UNLABELED = 2 };
extern const char *const fs_agent_dataset_kinds[];

typedef struct fs_agent_config {
    /* [agent] */
    char *name;                        /* required */
    char *coordinator;                 /* endpoint, required */
    char *coordinator_public_key;      /* Z85: the pinned server key ... */
    char *coordinator_public_key_file; /* ... or the path of its .pub file: exactly one is set */
    char *secret_key;                  /* path; default $CREDENTIALS_DIRECTORY/agent.key */
    char *public_key;                  /* Z85 or NULL */
    char *state_dir;
    int64_t threads;
    int log_level;
    /* [data]: the only paths the agent may open */
    fs_cfg_entries data;
    /* [limits] */
    fs_limits_config limits;
} fs_agent_config;

extern const fs_cfg_schema fs_coord_config_schema;
extern const fs_cfg_schema fs_agent_config_schema;

/* Typed wrappers: load (see fs_cfg_load_file: `out` written on success only) and free. */
FS_MUST_CHECK int fs_coord_config_load(const char *path, fs_coord_config *out, fs_diag *d);
void fs_coord_config_free(fs_coord_config *c);
FS_MUST_CHECK int fs_coord_config_reload(const char *path, fs_coord_config *cur,
                                         fs_cfg_change_cb cb, void *ud, fs_diag *d);
FS_MUST_CHECK int fs_agent_config_load(const char *path, fs_agent_config *out, fs_diag *d);
void fs_agent_config_free(fs_agent_config *c);
FS_MUST_CHECK int fs_agent_config_reload(const char *path, fs_agent_config *cur,
                                         fs_cfg_change_cb cb, void *ud, fs_diag *d);

/* The [data] entry called `name`, or NULL. Borrows. */
const fs_cfg_entry *fs_agent_config_dataset(const fs_agent_config *c, const char *name);

#endif
