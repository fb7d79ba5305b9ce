/*
 * main.c — `fedslim`: the offline tool (train, eval, inspect, import, compress, keygen).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fs_cli.h"
#include "fs_kernels.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static int __attribute__((unused)) not_built(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "fedslim %s: not available in this build\n", argv[0]);
    return 2;
}

#ifndef FS_HAVE_CMD_TRAIN
#define cmd_split not_built
#define cmd_train not_built
#define cmd_eval not_built
#define cmd_inspect not_built
#define cmd_import not_built
#endif
#ifndef FS_HAVE_CMD_COMPRESS
#define cmd_compress not_built
#endif
#ifndef FS_HAVE_CMD_KEYGEN
#define cmd_keygen not_built
#endif

static const command COMMANDS[] = {
    {"train", cmd_train, "train a model on a dataset"},
    {"eval", cmd_eval, "evaluate a model on a dataset"},
    {"inspect", cmd_inspect, "print architecture, parameters and FLOPs"},
    {"import", cmd_import, "convert a PyTorch state_dict (safetensors) into a fedslim model"},
    {"compress", cmd_compress, "few-shot compression on one machine"},
    {"keygen", cmd_keygen, "make a CURVE key pair (NAME.key, NAME.pub)"},
    {"split", cmd_split, "cut a dataset into non-IID per-site slices (IDX files)"},
};

int fs_cli_fail(const char *cmd, int status, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fedslim %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return status;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: fedslim COMMAND [options]   (fedslim COMMAND --help for details)\n\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].help);
}

int main(int argc, char **argv)
{
    fs_blas_select_core(argv);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("fedslim %s\n", FS_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i].name))
            return COMMANDS[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "fedslim: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
