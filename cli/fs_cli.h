/*
 * fs_cli.h — the subcommands of the `fedslim` tool. Each lives in cli/cmd_<name>.c and returns the
 * process exit status (0 ok, 1 runtime error, 2 usage error). Errors are one line on stderr naming
 * the file/field and the problem.
 */
#ifndef FS_CLI_H
#define FS_CLI_H

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_compress(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
int cmd_split(int argc, char **argv);

/* Prints "fedslim <cmd>: <msg>" on stderr and returns `status`. */
int fs_cli_fail(const char *cmd, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
