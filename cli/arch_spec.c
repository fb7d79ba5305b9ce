/*
 * arch_spec.c — architecture names on the command line: resnet20/32/56/110 (CIFAR-style, widths
 * 16/32/64), resnet18/34/50/101 (torchvision, ImageNet stem), mlp:H1,H2,..., and the general
 * resnet:basic|bottleneck:cifar|imagenet:D1,D2,..:W1,W2,...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_internal.h"

static int parse_ints(const char *s, int *out, int max, const char *what, fs_diag *d)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v <= 0 || v > 65536 || (*end && *end != ',' && *end != ':'))
            return fs_diag_set(d, FS_EINVAL, "%s: '%s' is not a list of positive integers", what, s);
        if (n == max)
            return fs_diag_set(d, FS_EINVAL, "%s: at most %d values", what, max);
        out[n++] = (int)v;
        if (*end != ',')
            break;
        p = end + 1;
    }
    return n;
}

int fs_cli_parse_arch(fs_arch *a, const char *spec, int in_c, int in_h, int in_w, int classes,
                      fs_diag *d)
{
    static const struct {
        const char *name;
        fs_block_type block;
        fs_stem_type stem;
        int n;
        int depths[4];
        int widths[4];
    } presets[] = {
        {"resnet20", FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, {3, 3, 3}, {16, 32, 64}},
        {"resnet32", FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, {5, 5, 5}, {16, 32, 64}},
        {"resnet44", FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, {7, 7, 7}, {16, 32, 64}},
        {"resnet56", FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, {9, 9, 9}, {16, 32, 64}},
        {"resnet110", FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, {18, 18, 18}, {16, 32, 64}},
        {"resnet18", FS_BLOCK_BASIC, FS_STEM_IMAGENET, 4, {2, 2, 2, 2}, {64, 128, 256, 512}},
        {"resnet34", FS_BLOCK_BASIC, FS_STEM_IMAGENET, 4, {3, 4, 6, 3}, {64, 128, 256, 512}},
        {"resnet50", FS_BLOCK_BOTTLENECK, FS_STEM_IMAGENET, 4, {3, 4, 6, 3}, {64, 128, 256, 512}},
        {"resnet101", FS_BLOCK_BOTTLENECK, FS_STEM_IMAGENET, 4, {3, 4, 23, 3}, {64, 128, 256, 512}},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(spec, presets[i].name))
            return fs_arch_resnet(a, presets[i].block, presets[i].stem, presets[i].n,
                                  presets[i].depths, presets[i].widths, in_c, in_h, in_w, classes,
                                  d);
    if (!strncmp(spec, "mlp:", 4)) {
        int hidden[FS_MAX_HIDDEN];
        int n = parse_ints(spec + 4, hidden, FS_MAX_HIDDEN, "--arch mlp", d);
        if (n < 0)
            return n;
        return fs_arch_mlp(a, n, hidden, in_c, in_h, in_w, classes, d);
    }
    if (!strncmp(spec, "resnet:", 7)) {
        char block[16], stem[16], rest[256];
        if (sscanf(spec + 7, "%15[a-z]:%15[a-z]:%255s", block, stem, rest) != 3)
            return fs_diag_set(d, FS_EINVAL, "--arch '%s': expected resnet:BLOCK:STEM:DEPTHS:WIDTHS",
                               spec);
        fs_block_type bt;
        fs_stem_type st;
        if (!strcmp(block, "basic"))
            bt = FS_BLOCK_BASIC;
        else if (!strcmp(block, "bottleneck"))
            bt = FS_BLOCK_BOTTLENECK;
        else
            return fs_diag_set(d, FS_EINVAL, "--arch: block '%s' is not basic or bottleneck", block);
        if (!strcmp(stem, "cifar"))
            st = FS_STEM_CIFAR;
        else if (!strcmp(stem, "imagenet"))
            st = FS_STEM_IMAGENET;
        else
            return fs_diag_set(d, FS_EINVAL, "--arch: stem '%s' is not cifar or imagenet", stem);
        char *colon = strchr(rest, ':');
        if (!colon)
            return fs_diag_set(d, FS_EINVAL, "--arch '%s': missing widths", spec);
        *colon = '\0';
        int depths[FS_MAX_STAGES], widths[FS_MAX_STAGES];
        int nd = parse_ints(rest, depths, FS_MAX_STAGES, "--arch depths", d);
        if (nd < 0)
            return nd;
        int nw = parse_ints(colon + 1, widths, FS_MAX_STAGES, "--arch widths", d);
        if (nw < 0)
            return nw;
        if (nd != nw)
            return fs_diag_set(d, FS_EINVAL, "--arch: %d depths but %d widths", nd, nw);
        return fs_arch_resnet(a, bt, st, nd, depths, widths, in_c, in_h, in_w, classes, d);
    }
    return fs_diag_set(d, FS_EINVAL, "--arch '%s' is unknown (resnet20, resnet32, resnet56, "
                       "resnet18, resnet34, resnet50, mlp:H1,H2,..., resnet:basic:cifar:3,3,3:16,32,64)",
                       spec);
}

int fs_cli_parse_floats(float *out, int max, const char *s, const char *what, fs_diag *d)
{
    int n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        float v = strtof(p, &end);
        if (end == p || (*end && *end != ','))
            return fs_diag_set(d, FS_EINVAL, "%s: '%s' is not a list of numbers", what, s);
        if (n == max)
            return fs_diag_set(d, FS_EINVAL, "%s: at most %d values", what, max);
        out[n++] = v;
        if (!*end)
            return n;
        p = end + 1;
    }
}

int fs_cli_parse_chw(int *c, int *h, int *w, const char *s, fs_diag *d)
{
    char extra;
    if (sscanf(s, "%dx%dx%d%c", c, h, w, &extra) != 3 || *c <= 0 || *c > FS_MAX_CHANNELS_IN ||
        *h <= 0 || *w <= 0 || *h > 16384 || *w > 16384)
        return fs_diag_set(d, FS_EINVAL, "--input '%s': expected CxHxW, e.g. 1x28x28 (C <= %d)", s,
                           FS_MAX_CHANNELS_IN);
    return 0;
}
