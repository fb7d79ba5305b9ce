/*
 * sample.c — deterministic few-shot samplers (balanced per class; PRACTISE's class-then-image rule)
 * and the Dirichlet non-IID split used to give federated sites different class mixes. Every draw
 * comes from fs_rng streams derived from the caller's seed, so a (dataset, seed) pair gives the same
 * indices on every machine. Outputs are index arrays in ascending order.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

/* Stream tags: every purpose gets its own fork of the seed's stream. */
#define TAG_CLASS(k) (0x100000000ull + (uint64_t)(k))
#define TAG_SITE(s) (0x200000000ull + (uint64_t)(s))

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Indices of each class in dataset order: order[start[k] .. start[k+1]). */
typedef struct {
    int32_t *order;
    int *start; /* [K + 1] */
} by_class;

static void by_class_free(by_class *b)
{
    free(b->order);
    free(b->start);
    b->order = NULL;
    b->start = NULL;
}

static int by_class_build(by_class *b, const fs_dataset *ds)
{
    int K = ds->num_classes;
    b->order = malloc(sizeof(int32_t) * (size_t)(ds->n ? ds->n : 1));
    b->start = calloc((size_t)K + 1, sizeof(int));
    int *fill = calloc((size_t)K + 1, sizeof(int));
    if (!b->order || !b->start || !fill) {
        free(fill);
        by_class_free(b);
        return FS_ENOMEM;
    }
    for (int i = 0; i < ds->n; i++) {
        FS_ASSERT(ds->labels[i] >= 0 && ds->labels[i] < K); /* readers guarantee it */
        b->start[ds->labels[i] + 1]++;
    }
    for (int k = 0; k < K; k++)
        b->start[k + 1] += b->start[k];
    memcpy(fill, b->start, sizeof(int) * (size_t)K);
    for (int i = 0; i < ds->n; i++)
        b->order[fill[ds->labels[i]]++] = i;
    free(fill);
    return 0;
}

/* Fisher-Yates, back to front, j uniform in [0, i]. */
static void shuffle(int32_t *v, int n, fs_rng *r)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)fs_rng_below(r, (uint64_t)i + 1);
        int32_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static int need_labels(const fs_dataset *ds, const char *what, fs_diag *d)
{
    if (!ds->labels || ds->num_classes < 1)
        return fs_diag_set(d, FS_EINVAL, "%s: %s needs a labeled dataset", ds->source, what);
    return 0;
}

int fs_sample_per_class(int32_t **idx_out, int *n_out, const fs_dataset *ds, int n_per_class,
                        uint64_t seed, fs_diag *d)
{
    int rc = need_labels(ds, "per-class sampling", d);
    if (rc)
        return rc;
    if (n_per_class < 1)
        return fs_diag_set(d, FS_EINVAL, "%s: %d images per class asked for", ds->source,
                           n_per_class);
    by_class b;
    if (by_class_build(&b, ds))
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    int32_t *out = malloc(sizeof(int32_t) * (size_t)(ds->n ? ds->n : 1));
    if (!out) {
        by_class_free(&b);
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    fs_rng base;
    fs_rng_seed(&base, seed);
    int m = 0;
    for (int k = 0; k < ds->num_classes; k++) {
        fs_rng r;
        fs_rng_fork(&r, &base, TAG_CLASS(k));
        int32_t *v = b.order + b.start[k];
        int cnt = b.start[k + 1] - b.start[k];
        shuffle(v, cnt, &r);
        int take = cnt < n_per_class ? cnt : n_per_class;
        memcpy(out + m, v, sizeof(int32_t) * (size_t)take);
        m += take;
    }
    by_class_free(&b);
    qsort(out, (size_t)m, sizeof *out, cmp_i32);
    *idx_out = out;
    *n_out = m;
    return 0;
}

int fs_sample_uniform(int32_t **idx_out, const fs_dataset *ds, int n_total, uint64_t seed,
                      fs_diag *d)
{
    if (n_total < 1 || n_total > ds->n)
        return fs_diag_set(d, FS_EINVAL, "%s: %d samples asked for, dataset has %d", ds->source,
                           n_total, ds->n);
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)ds->n);
    if (!perm)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    fs_rng r;
    fs_rng_seed(&r, seed);
    for (int i = 0; i < ds->n; i++)
        perm[i] = i;
    /* front-to-back partial Fisher-Yates: perm[0..n_total) is a uniform random subset */
    for (int i = 0; i < n_total; i++) {
        int j = i + (int)fs_rng_below(&r, (uint64_t)(ds->n - i));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    qsort(perm, (size_t)n_total, sizeof *perm, cmp_i32);
    int32_t *out = realloc(perm, sizeof(int32_t) * (size_t)n_total);
    *idx_out = out ? out : perm;
    return 0;
}

int fs_sample_total(int32_t **idx_out, const fs_dataset *ds, int n_total, uint64_t seed,
                    fs_diag *d)
{
    if (n_total < 1 || n_total > ds->n)
        return fs_diag_set(d, FS_EINVAL, "%s: %d samples asked for, dataset has %d", ds->source,
                           n_total, ds->n);
    if (!ds->labels)
        return fs_sample_uniform(idx_out, ds, n_total, seed, d);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)n_total);
    if (!out)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    fs_rng r;
    fs_rng_seed(&r, seed);
    {
        by_class b;
        uint8_t *taken = calloc((size_t)ds->n, 1);
        int *left = NULL;
        if (!taken || by_class_build(&b, ds)) {
            free(taken);
            free(out);
            return fs_diag_set(d, FS_ENOMEM, "out of memory");
        }
        int K = ds->num_classes;
        if (!(left = malloc(sizeof(int) * (size_t)K))) {
            by_class_free(&b);
            free(taken);
            free(out);
            return fs_diag_set(d, FS_ENOMEM, "out of memory");
        }
        for (int k = 0; k < K; k++)
            left[k] = b.start[k + 1] - b.start[k];
        /* PRACTISE: class uniformly, then image uniformly within it, reject repeats. Exhausted
         * classes are rejected as repeats would be; n_total <= n guarantees termination. */
        int m = 0;
        while (m < n_total) {
            int k = (int)fs_rng_below(&r, (uint64_t)K);
            if (left[k] == 0)
                continue;
            int cnt = b.start[k + 1] - b.start[k];
            int32_t i = b.order[b.start[k] + (int)fs_rng_below(&r, (uint64_t)cnt)];
            if (taken[i])
                continue;
            taken[i] = 1;
            left[k]--;
            out[m++] = i;
        }
        free(left);
        free(taken);
        by_class_free(&b);
    }
    qsort(out, (size_t)n_total, sizeof *out, cmp_i32);
    *idx_out = out;
    return 0;
}

/* ---------------------------------------------------------------- Dirichlet split */

static double uniform_open(fs_rng *r)
{
    return ((double)(fs_rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* (0, 1) */
}

static double normal(fs_rng *r)
{
    double u1 = uniform_open(r), u2 = uniform_open(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* log of a Gamma(a, 1) variate. Marsaglia & Tsang (2000) for a >= 1; for a < 1 the boost
 * G(a) = G(a + 1) * U^(1/a), kept in logs because U^(1/a) underflows for small a. */
static double log_gamma_variate(double a, fs_rng *r)
{
    double boost = 0.0;
    if (a < 1.0) {
        boost = log(uniform_open(r)) / a;
        a += 1.0;
    }
    double dd = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * dd);
    for (;;) {
        double x, v;
        do {
            x = normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = uniform_open(r);
        if (u < 1.0 - 0.0331 * (x * x) * (x * x) ||
            log(u) < 0.5 * x * x + dd * (1.0 - v + log(v)))
            return log(dd * v) + boost;
    }
}

void fs_split_free(fs_split *s)
{
    if (!s)
        return;
    if (s->idx)
        for (int i = 0; i < s->n_sites; i++)
            free(s->idx[i]);
    free(s->idx);
    free(s->count);
    free(s->props);
    free(s);
}

typedef struct {
    double frac;
    int k;
} frac_k;

static int cmp_frac_desc(const void *a, const void *b)
{
    const frac_k *x = a, *y = b;
    if (x->frac != y->frac)
        return x->frac > y->frac ? -1 : 1;
    return x->k - y->k;
}

int fs_split_dirichlet(fs_split **out, const fs_dataset *ds, int n_sites, double alpha,
                       int per_site, uint64_t seed, fs_diag *d)
{
    *out = NULL;
    int rc = need_labels(ds, "a Dirichlet split", d);
    if (rc)
        return rc;
    if (n_sites < 1 || per_site < 1 || !(alpha > 0.0) || !isfinite(alpha) ||
        (int64_t)n_sites * per_site > ds->n)
        return fs_diag_set(d, FS_EINVAL,
                           "%s: cannot split into %d sites of %d images with alpha %g (%d images)",
                           ds->source, n_sites, per_site, alpha, ds->n);
    int K = ds->num_classes;
    fs_split *s = calloc(1, sizeof *s);
    by_class b = {0};
    int *pos = calloc((size_t)K, sizeof(int));
    int *target = calloc((size_t)K, sizeof(int));
    double *lg = calloc((size_t)K, sizeof(double));
    frac_k *fk = calloc((size_t)K, sizeof(frac_k));
    rc = FS_ENOMEM;
    if (!s || !pos || !target || !lg || !fk)
        goto fail;
    s->n_sites = n_sites;
    s->num_classes = K;
    s->count = calloc((size_t)n_sites, sizeof(int));
    s->idx = calloc((size_t)n_sites, sizeof(int32_t *));
    s->props = calloc((size_t)n_sites * (size_t)K, sizeof(double));
    if (!s->count || !s->idx || !s->props || by_class_build(&b, ds))
        goto fail;

    fs_rng base;
    fs_rng_seed(&base, seed);
    for (int k = 0; k < K; k++) {       /* one shared shuffled pool per class: no overlap */
        fs_rng r;
        fs_rng_fork(&r, &base, TAG_CLASS(k));
        shuffle(b.order + b.start[k], b.start[k + 1] - b.start[k], &r);
    }
    for (int si = 0; si < n_sites; si++) {
        fs_rng r;
        fs_rng_fork(&r, &base, TAG_SITE(si));
        double *p = s->props + (size_t)si * K;
        double mx = -INFINITY, sum = 0.0;
        for (int k = 0; k < K; k++) {
            lg[k] = log_gamma_variate(alpha, &r);
            if (lg[k] > mx)
                mx = lg[k];
        }
        for (int k = 0; k < K; k++)
            sum += (p[k] = exp(lg[k] - mx));
        for (int k = 0; k < K; k++)
            p[k] /= sum;
        /* integer targets by largest remainder */
        int assigned = 0;
        for (int k = 0; k < K; k++) {
            double want = p[k] * per_site;
            target[k] = (int)floor(want);
            assigned += target[k];
            fk[k].frac = want - target[k];
            fk[k].k = k;
        }
        qsort(fk, (size_t)K, sizeof *fk, cmp_frac_desc);
        for (int j = 0; assigned < per_site; j = (j + 1) % K, assigned++)
            target[fk[j].k]++;
        if (!(s->idx[si] = malloc(sizeof(int32_t) * (size_t)per_site)))
            goto fail;
        int m = 0, shortfall = 0;
        for (int k = 0; k < K; k++) {
            int avail = b.start[k + 1] - b.start[k] - pos[k];
            int take = target[k] < avail ? target[k] : avail;
            memcpy(s->idx[si] + m, b.order + b.start[k] + pos[k], sizeof(int32_t) * (size_t)take);
            pos[k] += take;
            m += take;
            shortfall += target[k] - take;
        }
        /* classes that ran out: fill from the others, most wanted (largest p) first */
        for (int k = 0; k < K; k++) {
            fk[k].frac = p[k];
            fk[k].k = k;
        }
        qsort(fk, (size_t)K, sizeof *fk, cmp_frac_desc);
        for (int j = 0; j < K && shortfall > 0; j++) {
            int k = fk[j].k;
            int avail = b.start[k + 1] - b.start[k] - pos[k];
            int take = shortfall < avail ? shortfall : avail;
            memcpy(s->idx[si] + m, b.order + b.start[k] + pos[k], sizeof(int32_t) * (size_t)take);
            pos[k] += take;
            m += take;
            shortfall -= take;
        }
        FS_ASSERT(m == per_site); /* n_sites * per_site <= n */
        s->count[si] = m;
        qsort(s->idx[si], (size_t)m, sizeof(int32_t), cmp_i32);
    }
    by_class_free(&b);
    free(pos);
    free(target);
    free(lg);
    free(fk);
    *out = s;
    return 0;
fail:
    by_class_free(&b);
    free(pos);
    free(target);
    free(lg);
    free(fk);
    fs_split_free(s);
    return fs_diag_set(d, rc, "%s: out of memory splitting into %d sites", ds->source, n_sites);
}
