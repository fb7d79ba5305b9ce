/* test_daemon_config.c — the schema-driven INI loader (daemon/config.c) and the two daemon
 * schemas: good files, every kind of bad input with its FILE:LINE message, '#' inside values,
 * reload semantics, the example files in conf/ and their documentation. */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ini.h>

#include "fs_config.h"

#define Z85_A "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7" /* 40 chars, contains '%' and '@' */
#define Z85_B "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
#define Z85_HASH "abcdefghij#klmnopqrs#tuvwxyz0123456789AB" /* 40 chars with '#' */

static const char good_coord[] = "[coordinator]\n"
                                 "listen = tcp://127.0.0.1:7400\n"
                                 "secret_key = /etc/fedslim/keys/coordinator.key\n";

static const char good_agent[] = "[agent]\n"
                                 "name = site-a\n"
                                 "coordinator = tcp://10.0.0.1:7400\n"
                                 "coordinator_public_key = " Z85_A "\n"
                                 "secret_key = /etc/fedslim/keys/agent.key\n"
                                 "[data]\n"
                                 "train = idx:/data/fmnist/train\n";

static int load_coord(const char *text, fs_coord_config *c, fs_diag *d) {
    return fs_cfg_load_string(&fs_coord_config_schema, "t.conf", text, strlen(text), c, d);
}

static int load_agent(const char *text, fs_agent_config *c, fs_diag *d) {
    return fs_cfg_load_string(&fs_agent_config_schema, "a.conf", text, strlen(text), c, d);
}

static void coordinator_defaults_apply(void **state) {
    (void)state;
    unsetenv("CREDENTIALS_DIRECTORY");
    fs_coord_config c;
    fs_diag d = {0};
    assert_int_equal(load_coord(good_coord, &c, &d), 0);
    assert_string_equal(c.listen, "tcp://127.0.0.1:7400");
    assert_string_equal(c.secret_key, "/etc/fedslim/keys/coordinator.key");
    assert_null(c.public_key);
    assert_string_equal(c.allow_list, "/etc/fedslim/agents.allow");
    assert_string_equal(c.state_dir, "/var/lib/fedslim");
    assert_string_equal(c.control_socket, "/run/fedslim/control.sock");
    assert_string_equal(c.control_group, "fedslim");
    assert_int_equal(c.threads, 1);
    assert_string_equal(fs_cfg_log_levels[c.log_level], "info");
    assert_int_equal(fs_cfg_log_level(c.log_level), 6);
    assert_int_equal(c.limits.chunk_size, 1u << 20);
    assert_int_equal(c.limits.max_message, 256u << 20);
    assert_int_equal(c.limits.max_frames, 1024);
    assert_int_equal(c.limits.max_protocol_errors, 10);
    assert_int_equal(c.default_quorum, 0);
    assert_int_equal(c.step_timeout, 600000000ull);
    assert_int_equal(c.heartbeat_interval, 5000000ull);
    assert_true(c.checkpoint);
    fs_coord_config_free(&c);
    assert_null(c.listen);
}

static void coordinator_all_keys_parse(void **state) {
    (void)state;
    const char *text = "; full file\n"
                       "[coordinator]\n"
                       "listen = tcp://[::1]:7500\n"
                       "secret_key = /k/c.key\n"
                       "public_key = " Z85_HASH "\n"
                       "allow_list = /etc/x.allow\n"
                       "state_dir = /srv/state\n"
                       "control_socket = /run/x.sock\n"
                       "control_group = admins\n"
                       "threads = 4\n"
                       "log_level = debug\n"
                       "\n"
                       "[limits]\n"
                       "  chunk_size = 256 KiB\n" /* leading blanks are not continuations */
                       "\tmax_message = 2MB\n"
                       "max_frames = 8\n"
                       "max_protocol_errors = 0\n"
                       "# a comment\n"
                       "[jobs]\n"
                       "default_quorum = 2\n"
                       "step_timeout = 1min 30s\n"
                       "heartbeat_interval = 1.5s\n"
                       "checkpoint = off\n";
    fs_coord_config c;
    fs_diag d = {0};
    assert_int_equal(load_coord(text, &c, &d), 0);
    assert_string_equal(c.listen, "tcp://[::1]:7500");
    assert_string_equal(c.public_key, Z85_HASH);
    assert_string_equal(c.control_group, "admins");
    assert_int_equal(c.threads, 4);
    assert_int_equal(fs_cfg_log_level(c.log_level), 7);
    assert_int_equal(c.limits.chunk_size, 256u * 1024);
    assert_int_equal(c.limits.max_message, 2000000u);
    assert_int_equal(c.limits.max_frames, 8);
    assert_int_equal(c.limits.max_protocol_errors, 0);
    assert_int_equal(c.default_quorum, 2);
    assert_int_equal(c.step_timeout, 90000000ull);
    assert_int_equal(c.heartbeat_interval, 1500000ull);
    assert_false(c.checkpoint);
    fs_coord_config_free(&c);
}

static void agent_loads_with_datasets(void **state) {
    (void)state;
    char text[1024];
    snprintf(text, sizeof text, "%s%s", good_agent,
             "photos = unlabeled:/srv/photos\nxray_v2 = folder:/srv/x ray/train\n");
    fs_agent_config a;
    fs_diag d = {0};
    assert_int_equal(load_agent(text, &a, &d), 0);
    assert_string_equal(a.name, "site-a");
    assert_string_equal(a.coordinator_public_key, Z85_A);
    assert_int_equal(a.data.n, 3);
    const fs_cfg_entry *e = fs_agent_config_dataset(&a, "xray_v2");
    assert_non_null(e);
    assert_int_equal(e->kind, FS_DATASET_FOLDER);
    assert_string_equal(e->path, "/srv/x ray/train");
    assert_int_equal(e->line, 9);
    e = fs_agent_config_dataset(&a, "train");
    assert_int_equal(e->kind, FS_DATASET_IDX);
    assert_string_equal(e->path, "/data/fmnist/train");
    assert_int_equal(fs_agent_config_dataset(&a, "photos")->kind, FS_DATASET_UNLABELED);
    assert_null(fs_agent_config_dataset(&a, "nope"));
    fs_agent_config_free(&a);
}

static void credentials_directory_default(void **state) {
    (void)state;
    const char *text = "[coordinator]\nlisten = tcp://127.0.0.1:7400\n";
    fs_coord_config c;
    fs_diag d = {0};
    unsetenv("CREDENTIALS_DIRECTORY");
    assert_int_equal(load_coord(text, &c, &d), FS_EFORMAT);
    assert_string_equal(d.msg, "t.conf: [coordinator] secret_key: missing required key (no "
                               "default: $CREDENTIALS_DIRECTORY is not set)");
    setenv("CREDENTIALS_DIRECTORY", "/run/credentials/fedslim-coordinator.service", 1);
    assert_int_equal(load_coord(text, &c, &d), 0);
    assert_string_equal(c.secret_key,
                        "/run/credentials/fedslim-coordinator.service/coordinator.key");
    fs_coord_config_free(&c);
    setenv("CREDENTIALS_DIRECTORY", "relative/dir", 1);
    assert_int_equal(load_coord(text, &c, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "t.conf: [coordinator] secret_key: default 'relative/dir/"
                                  "coordinator.key' (from the environment): "));
    unsetenv("CREDENTIALS_DIRECTORY");
}

typedef struct {
    const char *text; /* appended to good_coord unless it starts with '!' */
    const char *want; /* exact message */
} bad_case;

static void bad_coordinator_files_name_line_and_key(void **state) {
    (void)state;
    unsetenv("CREDENTIALS_DIRECTORY");
    static const bad_case cases[] = {
        {"threads = 0\n", "t.conf:4: [coordinator] threads: 0 is out of range [1, 256]"},
        {"threads = two\n", "t.conf:4: [coordinator] threads: 'two' is not an integer"},
        {"threads = 2 \n\nthreads = 3\n",
         "t.conf:6: [coordinator] threads: duplicate key (first set on line 4)"},
        {"threds = 2\n", "t.conf:4: [coordinator] threds: unknown key (did you mean 'threads'?)"},
        {"chunk_size = 1MiB\n",
         "t.conf:4: [coordinator] chunk_size: unknown key (it belongs in [limits])"},
        {"bogus = 1\n", "t.conf:4: [coordinator] bogus: unknown key"},
        {"[limitz]\n", "t.conf:4: [limitz]: unknown section (a coordinator file has "
                       "[coordinator], [limits], [jobs])"},
        {"[limits] ; c\n", "t.conf:4: text after the section header (comments go on their own "
                           "line)"},
        {"[limits\n", "t.conf:4: section header without closing ']'"},
        {"just words\n", "t.conf:4: expected 'key = value' or '[section]'"},
        {"= 3\n", "t.conf:4: missing key name before '='"},
        {"log_level =\n", "t.conf:4: [coordinator] log_level: empty value (comment the line out "
                          "to use the default)"},
        {"log_level = loud\n", "t.conf:4: [coordinator] log_level: 'loud' is not one of: error, "
                               "warning, notice, info, debug"},
        {"state_dir = var/lib\n", "t.conf:4: [coordinator] state_dir: 'var/lib' is not an "
                                  "absolute path"},
        {"control_group = -x\n", "t.conf:4: [coordinator] control_group: '-x' is not a valid "
                                 "name (1..64 of A-Z a-z 0-9 . _ -, not starting with '.' or '-')"},
        {"public_key = short\n", "t.conf:4: [coordinator] public_key: 'short' is not a Z85 public "
                                 "key (40 characters from the Z85 alphabet)"},
        {"[jobs]\ncheckpoint = maybe\n", "t.conf:5: [jobs] checkpoint: 'maybe' is not a boolean "
                                         "(yes/no, true/false, on/off, 1/0)"},
        {"[jobs]\nstep_timeout = 30\n", "t.conf:5: [jobs] step_timeout: '30': a duration needs "
                                        "a unit (us, ms, s, min, h, d), e.g. 30s"},
        {"[jobs]\nstep_timeout = 5 fortnights\n",
         "t.conf:5: [jobs] step_timeout: '5 fortnights' is not a duration: unknown unit "
         "'fortnights' (us, ms, s, min, h, d)"},
        {"[jobs]\nstep_timeout = 500ms\n",
         "t.conf:5: [jobs] step_timeout: 500ms is out of range [1s, 7d]"},
        {"[jobs]\nheartbeat_interval = 20min\n",
         "t.conf:5: [jobs] heartbeat_interval: 20min is out of range [100ms, 10min]"},
        {"[jobs]\nheartbeat_interval = 10min\nstep_timeout = 5min\n",
         "t.conf: [jobs] heartbeat_interval: must be shorter than step_timeout"},
        {"[limits]\nchunk_size = 4Mb\n",
         "t.conf:5: [limits] chunk_size: '4Mb' is not a size: unknown unit 'Mb' (B, KiB, MiB, GiB, "
         "TiB, kB, MB, GB, TB)"},
        {"[limits]\nchunk_size = 1GiB\n",
         "t.conf:5: [limits] chunk_size: 1GiB is out of range [4KiB, 64MiB]"},
        {"[limits]\nchunk_size = 99999999999999999999999\n",
         "t.conf:5: [limits] chunk_size: '99999999999999999999999' is not a size (e.g. 4MiB, "
         "512KiB, 65536)"},
        {"[limits]\nchunk_size = 8MiB\nmax_message = 8MiB\n",
         "t.conf: [limits] max_message: 8MiB must exceed chunk_size (8MiB) by at least 4KiB"},
        {"listen = tcp://127.0.0.1:7401\n",
         "t.conf:4: [coordinator] listen: duplicate key (first set on line 2)"},
        {"!listen = tcp://127.0.0.1:7400\n[coordinator]\n",
         "t.conf:1: listen: key outside any section (put a [section] header above it)"},
        {"![coordinator]\nlisten = udp://x:1\n", "t.conf:2: [coordinator] listen: 'udp://x:1' is "
                                                 "not an endpoint (expected tcp://HOST:PORT or "
                                                 "ipc://PATH)"},
        {"![coordinator]\nlisten = tcp://host\n", "t.conf:2: [coordinator] listen: 'tcp://host': "
                                                  "missing ':PORT' (e.g. tcp://10.0.0.1:7400)"},
        {"![coordinator]\nlisten = tcp://host:70000\n",
         "t.conf:2: [coordinator] listen: 'tcp://host:70000': port must be a number in 1..65535 (or *)"},
        {"![coordinator]\nlisten = tcp://ho st:7\n",
         "t.conf:2: [coordinator] listen: 'tcp://ho st:7': bad character ' ' in host name"},
        {"![coordinator]\nlisten = ipc://rel/sock\n",
         "t.conf:2: [coordinator] listen: 'ipc://rel/sock': an ipc endpoint needs an absolute path "
         "or an @abstract name"},
        {"![coordinator]\nsecret_key = /k\n", "t.conf: [coordinator] listen: missing required key"},
        {"![jobs]\n", "t.conf: [coordinator] listen: missing required key"},
        {"!", "t.conf: [coordinator] listen: missing required key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[2048];
        if (cases[i].text[0] == '!')
            snprintf(text, sizeof text, "%s", cases[i].text + 1);
        else
            snprintf(text, sizeof text, "%s%s", good_coord, cases[i].text);
        fs_coord_config c;
        memset(&c, 0xA5, sizeof c);
        fs_coord_config before = c;
        fs_diag d = {0};
        int rc = load_coord(text, &c, &d);
        if (rc != FS_EFORMAT || strcmp(d.msg, cases[i].want) != 0)
            fail_msg("case %zu (%s): rc %d, message\n  got:  %s\n  want: %s", i, cases[i].text, rc,
                     d.msg, cases[i].want);
        /* out-parameter untouched on error */
        assert_memory_equal(&c, &before, sizeof c);
    }
}

static void bad_agent_files(void **state) {
    (void)state;
    static const bad_case cases[] = {
        {"videos = video:/srv/v\n", "a.conf:8: [data] videos: 'video:/srv/v' is not KIND:PATH with "
                                    "KIND one of: idx, folder, unlabeled"},
        {"val = idx:data/val\n", "a.conf:8: [data] val: 'data/val' is not an absolute path"},
        {"train = idx:/other\n", "a.conf:8: [data] train: duplicate key (first set on line 7)"},
        {".hidden = idx:/x\n", "a.conf:8: [data] .hidden: not a valid entry name (1..64 of A-Z "
                               "a-z 0-9 . _ -)"},
        {"![agent]\nname = site b\n", "a.conf:2: [agent] name: 'site b' is not a valid name (1..64 "
                                      "of A-Z a-z 0-9 . _ -, not starting with '.' or '-')"},
        {"[limits]\nmax_frames = 0\n",
         "a.conf:9: [limits] max_frames: 0 is out of range [1, 1024]"},
        {"!"
         "[agent]\nname = a\ncoordinator = tcp://h:1\ncoordinator_public_key = " Z85_A
         "\nsecret_key = /k\n",
         "a.conf: [data]: at least 1 entry is required (NAME = KIND:PATH)"},
        {"!"
         "[agent]\nname = a\ncoordinator = tcp://h:1\nsecret_key = /k\n[data]\nx = idx:/x\n",
         "a.conf: [agent] coordinator_public_key: missing required key (or "
         "coordinator_public_key_file = the coordinator's .pub file)"},
        {"[agent]\ncoordinator_public_key_file = /etc/fedslim/keys/coordinator.pub\n",
         "a.conf: [agent] coordinator_public_key_file: give either coordinator_public_key or "
         "coordinator_public_key_file, not both"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[2048];
        if (cases[i].text[0] == '!')
            snprintf(text, sizeof text, "%s", cases[i].text + 1);
        else
            snprintf(text, sizeof text, "%s%s", good_agent, cases[i].text);
        fs_agent_config a;
        fs_diag d = {0};
        int rc = load_agent(text, &a, &d);
        if (rc != FS_EFORMAT || strcmp(d.msg, cases[i].want) != 0)
            fail_msg("case %zu: rc %d, message\n  got:  %s\n  want: %s", i, rc, d.msg,
                     cases[i].want);
    }
}

static void agent_public_key_from_file(void **state) {
    (void)state;
    const char *text = "[agent]\nname = a\ncoordinator = tcp://h:1\nsecret_key = /k\n"
                       "coordinator_public_key_file = /etc/fedslim/keys/coordinator.pub\n"
                       "[data]\nx = idx:/x\n";
    fs_agent_config a;
    fs_diag d = {0};
    assert_int_equal(load_agent(text, &a, &d), 0);
    assert_null(a.coordinator_public_key);
    assert_string_equal(a.coordinator_public_key_file, "/etc/fedslim/keys/coordinator.pub");
    fs_agent_config_free(&a);
}

/* fs_cfg_write output loads back to the same configuration. */
static void write_then_load_roundtrips(void **state) {
    (void)state;
    const char *text = "[coordinator]\nlisten = ipc://@fs\nsecret_key = /k\npublic_key = " Z85_HASH
                       "\nthreads = 7\nlog_level = warning\n[limits]\nchunk_size = 5000\n"
                       "[jobs]\nstep_timeout = 1h 1ms 3us\ncheckpoint = no\n";
    fs_coord_config a;
    fs_coord_config b;
    fs_diag d = {0};
    assert_int_equal(load_coord(text, &a, &d), 0);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_non_null(f);
    assert_int_equal(fs_cfg_write(&fs_coord_config_schema, &a, f), 0);
    fclose(f);
    assert_non_null(strstr(out, "[coordinator]\nlisten = ipc://@fs\n"));
    assert_non_null(strstr(out, "\nstep_timeout = 1h 1ms 3us\n"));
    assert_non_null(strstr(out, "\nchunk_size = 5000B\n"));
    assert_non_null(strstr(out, "\nmax_message = 256MiB\n"));
    assert_non_null(strstr(out, "\ncheckpoint = no\n"));
    if (fs_cfg_load_string(&fs_coord_config_schema, "out", out, len, &b, &d) != 0)
        fail_msg("%s\n%s", d.msg, out);
    assert_int_equal(fs_cfg_diff(&fs_coord_config_schema, &a, &b, NULL, NULL), 0);
    fs_coord_config_free(&a);
    fs_coord_config_free(&b);
    free(out);

    char atext[1024];
    snprintf(atext, sizeof atext, "%sphotos = unlabeled:/srv/p q\n", good_agent);
    fs_agent_config x;
    fs_agent_config y;
    assert_int_equal(load_agent(atext, &x, &d), 0);
    f = open_memstream(&out, &len);
    assert_non_null(f);
    assert_int_equal(fs_cfg_write(&fs_agent_config_schema, &x, f), 0);
    fclose(f);
    assert_non_null(
        strstr(out, "\n[data]\ntrain = idx:/data/fmnist/train\nphotos = unlabeled:/srv/p q\n"));
    assert_int_equal(fs_cfg_load_string(&fs_agent_config_schema, "out", out, len, &y, &d), 0);
    assert_int_equal(fs_cfg_diff(&fs_agent_config_schema, &x, &y, NULL, NULL), 0);
    fs_agent_config_free(&x);
    fs_agent_config_free(&y);
    free(out);
}

static void too_many_entries(void **state) {
    (void)state;
    size_t cap = 16384;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t pos = (size_t)snprintf(text, cap, "%s", good_agent);
    for (int i = 0; i < FS_CFG_MAX_ENTRIES; i++)
        pos += (size_t)snprintf(text + pos, cap - pos, "d%d = idx:/d/%d\n", i, i);
    fs_agent_config a;
    fs_diag d = {0};
    assert_int_equal(load_agent(text, &a, &d), FS_EFORMAT);
    assert_string_equal(d.msg, "a.conf:71: [data] d63: too many entries (at most 64)");
    free(text);
}

/* Lines libinih would split, NUL bytes, CRLF and a BOM. */
static void raw_text_edge_cases(void **state) {
    (void)state;
    fs_coord_config c;
    fs_diag d = {0};
    char text[1024];
    char longv[300];
    memset(longv, 'a', sizeof longv);
    longv[sizeof longv - 1] = '\0';
    snprintf(text, sizeof text, "%s[limits]\n# x\nchunk_size = /%s=3\n", good_coord, longv);
    assert_int_equal(load_coord(text, &c, &d), FS_EFORMAT);
    assert_string_equal(d.msg, "t.conf:6: line too long (315 characters, at most 196)");

    static const char nul[] = "[coordinator]\nlisten = tcp://h:1\0x\nsecret_key = /k\n";
    assert_int_equal(
        fs_cfg_load_string(&fs_coord_config_schema, "t.conf", nul, sizeof nul - 1, &c, &d),
        FS_EFORMAT);
    assert_string_equal(d.msg, "t.conf:2: NUL byte in the line");

    const char *crlf = "\xEF\xBB\xBF[coordinator]\r\nlisten = tcp://h:1\r\nsecret_key = /k\r\n";
    assert_int_equal(load_coord(crlf, &c, &d), 0);
    assert_string_equal(c.listen, "tcp://h:1");
    assert_string_equal(c.secret_key, "/k");
    fs_coord_config_free(&c);

    /* no newline at the end of the file */
    assert_int_equal(load_coord("[coordinator]\nsecret_key = /k\nlisten = tcp://h:9", &c, &d), 0);
    assert_string_equal(c.listen, "tcp://h:9");
    fs_coord_config_free(&c);
}

/* A small schema with plain strings shows that values are taken literally. */
typedef struct {
    char *a;
    char *b;
    char *c;
    double ratio;
} lit_cfg;

static const fs_cfg_key lit_keys[] = {
    {.section = "s", .key = "a", .type = FS_CFG_STRING, .offset = offsetof(lit_cfg, a)},
    {.section = "s", .key = "b", .type = FS_CFG_STRING, .offset = offsetof(lit_cfg, b)},
    {.section = "s",
     .key = "c",
     .type = FS_CFG_STRING,
     .def = "dflt",
     .offset = offsetof(lit_cfg, c)},
    {.section = "s",
     .key = "ratio",
     .type = FS_CFG_DOUBLE,
     .def = "0.5",
     .offset = offsetof(lit_cfg, ratio),
     .dmin = 0.0,
     .dmax = 1.0},
};
static const fs_cfg_schema lit_schema = {"lit", sizeof(lit_cfg), lit_keys, 4, NULL};

static void hash_and_semicolon_stay_in_values(void **state) {
    (void)state;
    const char *text = "# comment\n; comment\n[s]\na = abc#def ;x # y\nb = #starts with hash\n"
                       "ratio = 0.25\n";
    lit_cfg v;
    fs_diag d = {0};
    assert_int_equal(fs_cfg_load_string(&lit_schema, "l", text, strlen(text), &v, &d), 0);
    assert_string_equal(v.a, "abc#def ;x # y");
    assert_string_equal(v.b, "#starts with hash");
    assert_string_equal(v.c, "dflt");
    assert_true(v.ratio == 0.25);
    fs_cfg_free(&lit_schema, &v);

    assert_int_equal(fs_cfg_load_string(&lit_schema, "l", "[s]\nratio = 1.5\n", 16, &v, &d),
                     FS_EFORMAT);
    assert_string_equal(d.msg, "l:2: [s] ratio: 1.5 is out of range [0, 1]");
    assert_int_equal(fs_cfg_load_string(&lit_schema, "l", "[s]\nratio = nan\n", 16, &v, &d),
                     FS_EFORMAT);
    assert_string_equal(d.msg, "l:2: [s] ratio: 'nan' is not a finite number");
    assert_int_equal(fs_cfg_load_string(&lit_schema, "l", "[s]\na = x\ty\n", 12, &v, &d),
                     FS_EFORMAT);
    assert_string_equal(d.msg, "l:2: [s] a: control character in the value");

    /* the Z85 key with '#' through the real schema */
    char text2[512];
    snprintf(text2, sizeof text2, "%spublic_key = %s\n", good_coord, Z85_HASH);
    fs_coord_config c;
    assert_int_equal(load_coord(text2, &c, &d), 0);
    assert_string_equal(c.public_key, Z85_HASH);
    fs_coord_config_free(&c);
}

/* What the loader guards against: libinih 55 as Debian builds it cuts " ;..." out of values
 * (inline comments on, prefix ';') but keeps '#'. The loader turns inline comments off for its
 * own parse and restores the library's settings afterwards. */
static int collect(void *user, const char *section, const char *name, const char *value) {
    (void)section;
    (void)name;
    snprintf(user, 64, "%s", value);
    return 1;
}

static void libinih_inline_comments(void **state) {
    (void)state;
    char got[64] = "";
    assert_int_equal(ini_parse_string("[s]\na = abc#def ;x\n", collect, got), 0);
    assert_string_equal(got, "abc#def");
#ifdef FS_HAVE_INIH_RUNTIME_OPTIONS
    bool before = ini_allow_inline_comments;
    lit_cfg v;
    fs_diag d = {0};
    const char *text = "[s]\na = abc#def ;x\n";
    assert_int_equal(fs_cfg_load_string(&lit_schema, "l", text, strlen(text), &v, &d), 0);
    assert_string_equal(v.a, "abc#def ;x");
    fs_cfg_free(&lit_schema, &v);
    assert_true(ini_allow_inline_comments == before); /* restored */
    assert_int_equal(ini_parse_string("[s]\na = abc#def ;x\n", collect, got), 0);
    assert_string_equal(got, "abc#def");
#endif
}

static void value_parsers(void **state) {
    (void)state;
    fs_diag d = {0};
    uint64_t v = 0;
    assert_int_equal(fs_cfg_parse_duration("30s", &v, &d), 0);
    assert_int_equal(v, 30000000u);
    assert_int_equal(fs_cfg_parse_duration("500ms", &v, &d), 0);
    assert_int_equal(v, 500000u);
    assert_int_equal(fs_cfg_parse_duration("1h 2min 3s 4ms 5us", &v, &d), 0);
    assert_int_equal(v, 3723004005ull);
    assert_int_equal(fs_cfg_parse_duration("0", &v, &d), 0);
    assert_int_equal(v, 0);
    assert_int_equal(fs_cfg_parse_duration("0.25ms", &v, &d), 0);
    assert_int_equal(v, 250u);
    assert_int_equal(fs_cfg_parse_duration("2d", &v, &d), 0);
    assert_int_equal(v, 172800000000ull);
    assert_int_equal(fs_cfg_parse_duration("99999999999999999d", &v, &d), FS_EFORMAT);
    assert_int_equal(fs_cfg_parse_duration("s", &v, &d), FS_EFORMAT);
    assert_int_equal(fs_cfg_parse_duration("1s2", &v, &d), FS_EFORMAT);
    assert_int_equal(fs_cfg_parse_duration("-1s", &v, &d), FS_EFORMAT);

    assert_int_equal(fs_cfg_parse_size("4MiB", &v, &d), 0);
    assert_int_equal(v, 4u << 20);
    assert_int_equal(fs_cfg_parse_size("1.5KiB", &v, &d), 0);
    assert_int_equal(v, 1536u);
    assert_int_equal(fs_cfg_parse_size("4096", &v, &d), 0);
    assert_int_equal(v, 4096u);
    assert_int_equal(fs_cfg_parse_size("10 MB", &v, &d), 0);
    assert_int_equal(v, 10000000u);
    assert_int_equal(fs_cfg_parse_size("2G", &v, &d), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(fs_cfg_parse_size("16777216TiB", &v, &d), FS_EFORMAT);
    assert_string_equal(d.msg, "'16777216TiB': size too large");
    assert_int_equal(fs_cfg_parse_size("MiB", &v, &d), FS_EFORMAT);

    bool b = false;
    assert_int_equal(fs_cfg_parse_bool("YES", &b, &d), 0);
    assert_true(b);
    assert_int_equal(fs_cfg_parse_bool("0", &b, &d), 0);
    assert_false(b);

    assert_int_equal(fs_cfg_check_endpoint("tcp://*:7400", &d), 0);
    assert_int_equal(fs_cfg_check_endpoint("tcp://coord.example.org:1", &d), 0);
    assert_int_equal(fs_cfg_check_endpoint("ipc://@fedslim-test", &d), 0);
    assert_int_equal(fs_cfg_check_endpoint("ipc:///run/fedslim/x.sock", &d), 0);
    assert_int_equal(fs_cfg_check_endpoint("tcp://[fe80::1:7400", &d), FS_EFORMAT);
    assert_int_equal(fs_cfg_check_endpoint("tcp://:7400", &d), FS_EFORMAT);
    assert_int_equal(fs_cfg_check_endpoint("tcp://h:0", &d), FS_EFORMAT);
    assert_int_equal(fs_cfg_check_endpoint("ipc://@", &d), FS_EFORMAT);

    char buf[64];
    fs_cfg_format_duration(90000000ull, buf, sizeof buf);
    assert_string_equal(buf, "1min 30s");
    fs_cfg_format_duration(1500, buf, sizeof buf);
    assert_string_equal(buf, "1ms 500us");
    fs_cfg_format_size(3u << 20, buf, sizeof buf);
    assert_string_equal(buf, "3MiB");
    fs_cfg_format_size(1000, buf, sizeof buf);
    assert_string_equal(buf, "1000B");
}

static char g_dir[64];

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

typedef struct {
    char changed[8][32];
    int n;
    int restart;
} diff_log;

static void on_diff(const fs_cfg_key *k, void *ud) {
    diff_log *l = ud;
    if (l->n < 8)
        snprintf(l->changed[l->n++], sizeof l->changed[0], "%s.%s", k->section, k->key);
    if (k->flags & FS_CFG_RESTART)
        l->restart++;
}

/* Reload: a bad new file leaves the configuration in force untouched; a good one swaps. */
static void reload_keeps_old_config_on_error(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/coordinator.conf", g_dir);
    write_text(path,
               "[coordinator]\nlisten = tcp://127.0.0.1:7400\nsecret_key = /k\nthreads = 2\n");
    fs_coord_config cur;
    fs_diag d = {0};
    assert_int_equal(fs_coord_config_load(path, &cur, &d), 0);
    assert_int_equal(cur.threads, 2);

    write_text(path,
               "[coordinator]\nlisten = tcp://127.0.0.1:7400\nsecret_key = /k\nthreads = 0\n");
    fs_coord_config next;
    memset(&next, 0, sizeof next);
    int rc = fs_coord_config_load(path, &next, &d);
    assert_int_equal(rc, FS_EFORMAT);
    char want[256];
    snprintf(want, sizeof want, "%s:4: [coordinator] threads: 0 is out of range [1, 256]", path);
    assert_string_equal(d.msg, want);
    assert_null(next.listen);         /* nothing written on error */
    assert_int_equal(cur.threads, 2); /* old config still in force */
    assert_string_equal(cur.listen, "tcp://127.0.0.1:7400");

    write_text(path, "[coordinator]\nlisten = tcp://127.0.0.1:7401\nsecret_key = /k\nthreads = 2\n"
                     "log_level = debug\n");
    assert_int_equal(fs_coord_config_load(path, &next, &d), 0);
    diff_log log = {0};
    assert_int_equal(fs_cfg_diff(&fs_coord_config_schema, &cur, &next, on_diff, &log), 2);
    assert_string_equal(log.changed[0], "coordinator.listen");
    assert_string_equal(log.changed[1], "coordinator.log_level");
    assert_int_equal(log.restart, 1);
    fs_coord_config_free(&cur);
    cur = next; /* the swap */
    assert_int_equal(fs_cfg_diff(&fs_coord_config_schema, &cur, &cur, NULL, NULL), 0);
    fs_coord_config_free(&cur);

    char missing[160];
    snprintf(missing, sizeof missing, "%s/nope.conf", g_dir);
    assert_int_equal(fs_coord_config_load(missing, &next, &d), FS_EIO);
    assert_non_null(strstr(d.msg, "nope.conf: cannot open"));
    unlink(path);
}

typedef struct {
    char log[8][48];
    int n;
} change_log;

static void on_change(const fs_cfg_key *k, bool applied, void *ud) {
    change_log *l = ud;
    if (l->n < 8)
        snprintf(l->log[l->n++], sizeof l->log[0], "%s %s", k->key, applied ? "applied" : "kept");
}

/* fs_cfg_reload: restart-only keys keep their running value, the others change. */
static void reload_helper_keeps_restart_keys(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/reload.conf", g_dir);
    write_text(path, "[coordinator]\nlisten = tcp://127.0.0.1:7400\nsecret_key = /k\n");
    fs_coord_config cur;
    fs_diag d = {0};
    assert_int_equal(fs_coord_config_load(path, &cur, &d), 0);

    write_text(path, "[coordinator]\nlisten = tcp://127.0.0.1:9999\nsecret_key = /k\n"
                     "allow_list = /etc/other.allow\n[jobs]\nstep_timeout = 1h\n");
    change_log log = {0};
    assert_int_equal(fs_coord_config_reload(path, &cur, on_change, &log, &d), 0);
    assert_int_equal(log.n, 3);
    assert_string_equal(log.log[0], "listen kept");
    assert_string_equal(log.log[1], "allow_list applied");
    assert_string_equal(log.log[2], "step_timeout applied");
    assert_string_equal(cur.listen, "tcp://127.0.0.1:7400");
    assert_string_equal(cur.allow_list, "/etc/other.allow");
    assert_int_equal(cur.step_timeout, 3600000000ull);

    /* a bad file: error, nothing changes, no callbacks */
    write_text(path, "[coordinator]\nlisten = tcp://127.0.0.1:7400\nsecret_key = /k\nx = 1\n");
    log.n = 0;
    assert_int_equal(fs_coord_config_reload(path, &cur, on_change, &log, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "reload.conf:4: [coordinator] x: unknown key"));
    assert_int_equal(log.n, 0);
    assert_string_equal(cur.allow_list, "/etc/other.allow");
    assert_int_equal(cur.step_timeout, 3600000000ull);
    fs_coord_config_free(&cur);
    unlink(path);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = calloc(1, 1 << 17);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 17) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The shipped examples load as they are (under systemd, where the secret key is a credential),
 * and every schema key is documented in the example file and in docs/configuration.md. */
static void example_files_load_and_document_every_key(void **state) {
    (void)state;
    const char *src = getenv("FS_SOURCE_DIR");
    assert_non_null(src);
    char path[1024];
    fs_diag d = {0};
    setenv("CREDENTIALS_DIRECTORY", "/run/credentials/fedslim-coordinator.service", 1);

    snprintf(path, sizeof path, "%s/conf/coordinator.conf", src);
    fs_coord_config c;
    if (fs_coord_config_load(path, &c, &d) != 0)
        fail_msg("%s", d.msg);
    assert_string_equal(c.listen, "tcp://0.0.0.0:7400");
    fs_coord_config_free(&c);
    char *coord_text = slurp(path);

    snprintf(path, sizeof path, "%s/conf/agent.conf", src);
    fs_agent_config a;
    if (fs_agent_config_load(path, &a, &d) != 0)
        fail_msg("%s", d.msg);
    assert_true(a.data.n >= 1);
    fs_agent_config_free(&a);
    char *agent_text = slurp(path);

    /* the example files uncommented: each "#key = default" line is a valid setting, and the
     * default it shows is the schema's */
    for (int which = 0; which < 2; which++) {
        const char *text = which ? agent_text : coord_text;
        const fs_cfg_schema *s = which ? &fs_agent_config_schema : &fs_coord_config_schema;
        char *copy = malloc(strlen(text) + 1);
        assert_non_null(copy);
        size_t o = 0;
        for (const char *p = text; *p;) {
            const char *nl = strchr(p, '\n');
            size_t n = nl ? (size_t)(nl - p + 1) : strlen(p);
            /* "#key = value" (no space after '#') is a commented-out setting */
            bool setting = p[0] == '#' && p[1] >= 'a' && p[1] <= 'z' && memchr(p, '=', n) &&
                           !(n >= 2 && p[n - 2] == '='); /* "#public_key =" has no value */
            if (setting) {
                memcpy(copy + o, p + 1, n - 1);
                o += n - 1;
            } else {
                memcpy(copy + o, p, n);
                o += n;
            }
            p += n;
        }
        copy[o] = '\0';
        void *obj = calloc(1, s->size);
        void *dflt = calloc(1, s->size);
        assert_non_null(obj);
        assert_non_null(dflt);
        if (fs_cfg_load_string(s, "uncommented", copy, o, obj, &d) != 0)
            fail_msg("%s example uncommented: %s", s->name, d.msg);
        assert_int_equal(fs_cfg_load_string(s, "orig", text, strlen(text), dflt, &d), 0);
        /* secret_key is the one commented line that is not the default */
        /* and in the agent example the second dataset line */
        size_t ndiff = fs_cfg_diff(s, obj, dflt, NULL, NULL);
        assert_int_equal(ndiff, which ? 2 : 1);
        fs_cfg_free(s, obj);
        fs_cfg_free(s, dflt);
        free(obj);
        free(dflt);
        free(copy);
    }

    snprintf(path, sizeof path, "%s/docs/configuration.md", src);
    char *doc = slurp(path);
    const fs_cfg_schema *schemas[2] = {&fs_coord_config_schema, &fs_agent_config_schema};
    const char *texts[2] = {coord_text, agent_text};
    for (int i = 0; i < 2; i++) {
        for (size_t k = 0; k < schemas[i]->n_keys; k++) {
            const fs_cfg_key *key = &schemas[i]->keys[k];
            char needle[96];
            if (strcmp(key->key, "*") == 0) {
                snprintf(needle, sizeof needle, "[%s]", key->section);
                assert_non_null(strstr(texts[i], needle));
                assert_non_null(strstr(doc, needle));
                continue;
            }
            char a1[80];
            char a2[80];
            snprintf(a1, sizeof a1, "\n%s = ", key->key);
            snprintf(a2, sizeof a2, "\n#%s =", key->key);
            /* ";key = ..." shows an alternative to a set key (not uncommented above) */
            char a3[80];
            snprintf(a3, sizeof a3, "\n;%s =", key->key);
            if (!strstr(texts[i], a1) && !strstr(texts[i], a2) && !strstr(texts[i], a3))
                fail_msg("%s example does not show [%s] %s", schemas[i]->name, key->section,
                         key->key);
            snprintf(needle, sizeof needle, "`%s`", key->key);
            if (!strstr(doc, needle))
                fail_msg("docs/configuration.md does not document %s", needle);
            assert_non_null(key->doc);
        }
    }
    free(doc);
    free(coord_text);
    free(agent_text);
    unsetenv("CREDENTIALS_DIRECTORY");
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/fs-test-config-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return rmdir(g_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(coordinator_defaults_apply),
        cmocka_unit_test(coordinator_all_keys_parse),
        cmocka_unit_test(agent_loads_with_datasets),
        cmocka_unit_test(credentials_directory_default),
        cmocka_unit_test(bad_coordinator_files_name_line_and_key),
        cmocka_unit_test(bad_agent_files),
        cmocka_unit_test(agent_public_key_from_file),
        cmocka_unit_test(write_then_load_roundtrips),
        cmocka_unit_test(too_many_entries),
        cmocka_unit_test(raw_text_edge_cases),
        cmocka_unit_test(hash_and_semicolon_stay_in_values),
        cmocka_unit_test(libinih_inline_comments),
        cmocka_unit_test(value_parsers),
        cmocka_unit_test(reload_keeps_old_config_on_error),
        cmocka_unit_test(reload_helper_keeps_restart_keys),
        cmocka_unit_test(example_files_load_and_document_every_key),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
