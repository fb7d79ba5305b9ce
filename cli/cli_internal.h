/* cli_internal.h — helpers shared by the fedslim subcommands. */
#ifndef FS_CLI_INTERNAL_H
#define FS_CLI_INTERNAL_H

#include "fs_arch.h"
#include "fs_util.h"

/* An architecture from its command-line name (see arch_spec.c). */
int fs_cli_parse_arch(fs_arch *a, const char *spec, int in_c, int in_h, int in_w, int classes,
                      fs_diag *d);
/* "0.5,0.25" -> out; returns the count or a negative FS_E*. */
int fs_cli_parse_floats(float *out, int max, const char *s, const char *what, fs_diag *d);
/* "1x28x28" */
int fs_cli_parse_chw(int *c, int *h, int *w, const char *s, fs_diag *d);
/* strtol/strtod with range checks; print the error and return 2 on failure */
int fs_cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int fs_cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);

#endif
