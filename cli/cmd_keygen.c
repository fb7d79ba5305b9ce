/*
 * cmd_keygen.c — `fedslim keygen --out DIR/NAME`: makes a CURVE key pair, DIR/NAME.key (secret,
 * 0600, never overwritten) and DIR/NAME.pub, and prints the allow-list line for the public key.
 */
#include <stdio.h>
#include <string.h>

#include "fs_cli.h"
#include "fs_keys.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: fedslim keygen --out DIR/NAME\n"
               "  writes DIR/NAME.key (secret, mode 0600, refuses to overwrite) and DIR/NAME.pub;\n"
               "  prints the line to add to the coordinator's allow-list: NAME <public key>\n");
}

int cmd_keygen(int argc, char **argv)
{
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strncmp(argv[i], "--out=", 6)) {
            out = argv[i] + 6;
        } else {
            usage(stderr);
            return fs_cli_fail("keygen", 2, "unknown argument '%s'", argv[i]);
        }
    }
    if (!out) {
        usage(stderr);
        return fs_cli_fail("keygen", 2, "--out DIR/NAME is required");
    }
    char dir[4096];
    const char *slash = strrchr(out, '/');
    const char *name = slash ? slash + 1 : out;
    if (slash) {
        size_t n = (size_t)(slash - out);
        if (n >= sizeof dir)
            return fs_cli_fail("keygen", 2, "%s: path too long", out);
        memcpy(dir, out, n);
        dir[n] = '\0';
        if (n == 0)
            strcpy(dir, "/");
    } else {
        strcpy(dir, ".");
    }
    char pub[41];
    fs_diag d = {0};
    int rc = fs_keys_generate(dir, name, pub, &d);
    if (rc)
        return fs_cli_fail("keygen", 1, "%s", fs_diag_text(&d, rc));
    printf("%s %s\n", name, pub);
    fprintf(stderr, "fedslim keygen: wrote %s/%s.key (secret, 0600) and %s/%s.pub\n", dir, name,
            dir, name);
    return 0;
}
