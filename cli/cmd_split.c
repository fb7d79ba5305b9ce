/*
 * cmd_split.c — `fedslim split`: cut a labeled dataset into non-IID per-site slices
 * (Dirichlet(alpha) class proportions, no image in two sites) written as IDX files
 * DIR/site-K-images-idx3-ubyte and DIR/site-K-labels-idx1-ubyte, K = 1..N. For demos and tests of
 * the federation: each agent's [data] entry then reads idx:DIR/site-K.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_internal.h"
#include "fs_cli.h"
#include "fs_data.h"

static int put_be32(FILE *f, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    return fwrite(b, 1, 4, f) == 4 ? 0 : -1;
}

static int write_idx(const char *path, const fs_dataset *ds, const int32_t *idx, int n, int labels,
                     fs_diag *d)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return fs_diag_errno(d, FS_EIO, "%s", tmp);
    int bad = 0;
    if (labels) {
        bad |= put_be32(f, 0x00000801u) | put_be32(f, (uint32_t)n);
        for (int i = 0; i < n && !bad; i++) {
            unsigned char l = (unsigned char)ds->labels[idx[i]];
            bad |= fwrite(&l, 1, 1, f) != 1;
        }
    } else {
        bad |= put_be32(f, 0x00000803u) | put_be32(f, (uint32_t)n) | put_be32(f, (uint32_t)ds->h) |
               put_be32(f, (uint32_t)ds->w);
        size_t per = (size_t)ds->h * ds->w;
        for (int i = 0; i < n && !bad; i++)
            bad |= fwrite(fs_dataset_image(ds, idx[i]), 1, per, f) != per;
    }
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0) {
        remove(tmp);
        return fs_diag_errno(d, FS_EIO, "%s: cannot write", path);
    }
    return 0;
}

/* mkdir -p */
static void make_dirs(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

static const char USAGE[] =
    "usage: fedslim split --data idx:DIR/PREFIX --sites N --per-site K --out DIR\n"
    "       [--alpha A (0.5)] [--seed S (1)]\n";

int cmd_split(int argc, char **argv)
{
    const char *cmd = "split";
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},     {"sites", required_argument, 0, 'n'},
        {"per-site", required_argument, 0, 'k'}, {"alpha", required_argument, 0, 'a'},
        {"seed", required_argument, 0, 's'},     {"out", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    const char *data_s = NULL, *out_s = NULL;
    long sites = 0, per = 0, seed = 1;
    double alpha = 0.5;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': data_s = optarg; break;
        case 'o': out_s = optarg; break;
        case 'n': if ((rc = fs_cli_int(cmd, "--sites", optarg, 1, 1000, &sites))) return rc; break;
        case 'k': if ((rc = fs_cli_int(cmd, "--per-site", optarg, 1, 1 << 24, &per))) return rc; break;
        case 's': if ((rc = fs_cli_int(cmd, "--seed", optarg, 0, 1L << 62, &seed))) return rc; break;
        case 'a': if ((rc = fs_cli_float(cmd, "--alpha", optarg, 1e-6, 1e6, &alpha))) return rc; break;
        case 'h': fputs(USAGE, stdout); return 0;
        default: fputs(USAGE, stderr); return 2;
        }
    }
    if (!data_s || !out_s || !sites || !per || optind != argc) {
        fputs(USAGE, stderr);
        return fs_cli_fail(cmd, 2, "--data, --sites, --per-site and --out are required");
    }
    fs_diag d = {0};
    fs_dataset *ds = NULL;
    fs_split *sp = NULL;
    int status = 1;
    if (fs_dataset_open(&ds, data_s, NULL, &d))
        goto fail;
    if (ds->c != 1) {
        fs_diag_set(&d, FS_EUNSUPPORTED, "%s: IDX output holds grey images only", data_s);
        goto fail;
    }
    if (fs_split_dirichlet(&sp, ds, (int)sites, alpha, (int)per, (uint64_t)seed, &d))
        goto fail;
    make_dirs(out_s);
    for (int s = 0; s < sp->n_sites; s++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/site-%d-images-idx3-ubyte", out_s, s + 1);
        if (write_idx(path, ds, sp->idx[s], sp->count[s], 0, &d))
            goto fail;
        snprintf(path, sizeof path, "%s/site-%d-labels-idx1-ubyte", out_s, s + 1);
        if (write_idx(path, ds, sp->idx[s], sp->count[s], 1, &d))
            goto fail;
        int64_t counts[256] = {0};
        if (ds->num_classes <= 256 &&
            fs_dataset_class_counts(ds, sp->idx[s], sp->count[s], counts, &d) == 0) {
            printf("site-%d: %d images, per class:", s + 1, sp->count[s]);
            for (int k = 0; k < ds->num_classes; k++)
                printf(" %lld", (long long)counts[k]);
            printf("\n");
        }
    }
    status = 0;
    goto done;
fail:
    fs_cli_fail(cmd, 1, "%s", fs_diag_text(&d, d.code));
done:
    fs_split_free(sp);
    fs_dataset_free(ds);
    return status;
}
