/*
 * dataset.c — open a dataset from a spec (idx:, folder:, unlabeled:), hold it in memory as one
 * uint8 block [n, c, h, w], copy subsets, count classes. Folder listing follows torchvision's
 * ImageFolder (sorted classes, sorted os.walk order) so that label numbers and sample order agree
 * with a PyTorch pipeline over the same tree. Decoding lives in image.c, IDX parsing in idx.c.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "data_internal.h"

#define MAX_WALK_DEPTH 32
#define MAX_WALK_ENTRIES 10000000 /* directory entries visited per open, bounds a hostile tree */
#define IDX_FILE_LIMIT ((size_t)2 << 30)

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static char *path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int slash = la > 0 && a[la - 1] != '/' && lb > 0;
    char *p = malloc(la + lb + 2);
    if (!p)
        return NULL;
    memcpy(p, a, la);
    if (slash)
        p[la++] = '/';
    memcpy(p + la, b, lb + 1);
    return p;
}

static void free_strv(char **v, int n)
{
    if (!v)
        return;
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void fs_dataset_free(fs_dataset *ds)
{
    if (!ds)
        return;
    fs_free(ds->pixels);
    free(ds->labels);
    free_strv(ds->class_names, ds->num_classes);
    free_strv(ds->files, ds->n);
    free(ds->source);
    free(ds);
}

const uint8_t *fs_dataset_image(const fs_dataset *ds, int i)
{
    FS_ASSERT(ds && i >= 0 && i < ds->n);
    return ds->pixels + (size_t)i * (size_t)ds->c * (size_t)ds->h * (size_t)ds->w;
}

/* Resolved options with defaults filled in. */
typedef struct {
    int channels; /* 0 = source default */
    int height, width;
    int resize;
    int max_images;
    int num_classes;
    int drop_labels;
    size_t max_bytes;
} opts_t;

static int check_opts(opts_t *r, const fs_data_opts *o, const char *spec, fs_diag *d)
{
    fs_data_opts z = {0};
    if (!o)
        o = &z;
    if (o->channels != 0 && o->channels != 1 && o->channels != 3)
        return fs_diag_set(d, FS_EINVAL, "%s: channels must be 1 or 3 (or 0 for the default), not %d",
                           spec, o->channels);
    if (o->height < 0 || o->width < 0 || o->height > FS_DATA_MAX_SIDE ||
        o->width > FS_DATA_MAX_SIDE || (o->height == 0) != (o->width == 0))
        return fs_diag_set(d, FS_EINVAL,
                           "%s: image size %dx%d: give both height and width in 1..%d, or neither",
                           spec, o->height, o->width, FS_DATA_MAX_SIDE);
    if (o->max_images < 0 || o->num_classes < 0 || o->num_classes > FS_DATA_MAX_CLASSES)
        return fs_diag_set(d, FS_EINVAL, "%s: bad max_images %d or num_classes %d", spec,
                           o->max_images, o->num_classes);
    r->channels = o->channels;
    r->height = o->height;
    r->width = o->width;
    r->resize = o->resize != 0;
    r->max_images = o->max_images;
    r->num_classes = o->num_classes;
    r->drop_labels = o->drop_labels != 0;
    r->max_bytes = o->max_bytes ? o->max_bytes : FS_DATA_DEFAULT_MAX_BYTES;
    return 0;
}

/* Allocates the pixel block for n images of c x h x w, checked against the byte ceiling. */
static int alloc_pixels(fs_dataset *ds, size_t max_bytes, const char *what, fs_diag *d)
{
    size_t per, total;
    if (fs_mul_size((size_t)ds->c * (size_t)ds->h, (size_t)ds->w, &per) ||
        fs_mul_size(per, (size_t)ds->n, &total) || total > max_bytes)
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: %d images of %dx%dx%d exceed the limit of %zu pixel bytes", what,
                           ds->n, ds->c, ds->h, ds->w, max_bytes);
    ds->pixels = fs_alloc(total);
    if (!ds->pixels)
        return fs_diag_set(d, FS_ENOMEM, "%s: cannot allocate %zu bytes of pixels", what, total);
    return 0;
}

/* HWC interleaved -> CHW planar. */
static void hwc_to_chw(uint8_t *dst, const uint8_t *src, int h, int w, int c)
{
    size_t plane = (size_t)h * (size_t)w;
    if (c == 1) {
        memcpy(dst, src, plane);
        return;
    }
    for (size_t i = 0; i < plane; i++)
        for (int ch = 0; ch < c; ch++)
            dst[(size_t)ch * plane + i] = src[i * (size_t)c + (size_t)ch];
}

static int number_class_names(fs_dataset *ds)
{
    ds->class_names = calloc((size_t)ds->num_classes, sizeof(char *));
    if (!ds->class_names)
        return FS_ENOMEM;
    for (int k = 0; k < ds->num_classes; k++) {
        char tmp[16];
        snprintf(tmp, sizeof tmp, "%d", k);
        if (!(ds->class_names[k] = xstrdup(tmp)))
            return FS_ENOMEM;
    }
    return 0;
}

/* ---------------------------------------------------------------- IDX */

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Finds PREFIX<sep><kind>-idx<k>-ubyte[.gz]; *path is malloc'd. */
static int find_idx(char **path, const char *prefix, const char *kind, int k, fs_diag *d)
{
    static const char seps[] = {'-', '.'};
    static const char *sufs[] = {"", ".gz"};
    char first[4096] = "";
    for (int s = 0; s < 2; s++) {
        for (int z = 0; z < 2; z++) {
            char tail[64];
            snprintf(tail, sizeof tail, "-%s%cidx%d-ubyte%s", kind, seps[s], k, sufs[z]);
            char *p = malloc(strlen(prefix) + strlen(tail) + 1);
            if (!p)
                return fs_diag_set(d, FS_ENOMEM, "out of memory");
            strcpy(p, prefix);
            strcat(p, tail);
            if (!first[0])
                snprintf(first, sizeof first, "%s", p);
            if (file_exists(p)) {
                *path = p;
                return 0;
            }
            free(p);
        }
    }
    return fs_diag_set(d, FS_ENOTFOUND, "%s: no such file (nor %s.gz, nor the '.idx%d' spelling)",
                       first, first, k);
}

/* Reads an IDX file, inflating it if it is gzip; *raw owns the bytes *v points into. */
static int load_idx(uint8_t **raw, fs_idx_view *v, const char *path, int want_ndim, fs_diag *d)
{
    uint8_t *file = NULL;
    size_t len = 0;
    int rc = fs_read_file(path, IDX_FILE_LIMIT, &file, &len, d);
    if (rc)
        return rc;
    if (fs_data_is_gzip(file, len)) {
        uint8_t *plain = NULL;
        size_t plen = 0;
        rc = fs_data_gunzip(&plain, &plen, file, len, IDX_FILE_LIMIT, path, d);
        free(file);
        if (rc)
            return rc;
        file = plain;
        len = plen;
    }
    rc = fs_idx_parse(v, file, len, want_ndim, path, d);
    if (rc) {
        free(file);
        return rc;
    }
    *raw = file;
    return 0;
}

static int open_idx(fs_dataset *ds, const char *prefix, const opts_t *o, fs_diag *d)
{
    char *ipath = NULL, *lpath = NULL;
    uint8_t *iraw = NULL, *lraw = NULL, *tmp = NULL;
    fs_idx_view iv, lv;
    int rc;
    if ((rc = find_idx(&ipath, prefix, "images", 3, d)))
        goto out;
    if ((rc = load_idx(&iraw, &iv, ipath, 3, d)))
        goto out;
    uint32_t n = iv.dims[0], h = iv.dims[1], w = iv.dims[2];
    if (h > FS_DATA_MAX_SIDE || w > FS_DATA_MAX_SIDE || n > FS_DATA_MAX_IMAGES) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: %u images of %ux%u exceed the limits (%d images, %d "
                         "per side)", ipath, n, h, w, FS_DATA_MAX_IMAGES, FS_DATA_MAX_SIDE);
        goto out;
    }
    if (!o->drop_labels) {
        if ((rc = find_idx(&lpath, prefix, "labels", 1, d)))
            goto out;
        if ((rc = load_idx(&lraw, &lv, lpath, 1, d)))
            goto out;
        if (lv.dims[0] != n) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: %u labels but %s has %u images", lpath,
                             lv.dims[0], ipath, n);
            goto out;
        }
    }
    ds->n = (int)n;
    if (o->max_images && (uint32_t)o->max_images < n)
        ds->n = o->max_images;
    ds->c = o->channels ? o->channels : 1;
    ds->h = o->height ? o->height : (int)h;
    ds->w = o->width ? o->width : (int)w;
    int need_resize = ds->h != (int)h || ds->w != (int)w;
    if (need_resize && !o->resize) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: images are %ux%u but %dx%d was asked for (resize is off)",
                         ipath, h, w, ds->h, ds->w);
        goto out;
    }
    if ((rc = alloc_pixels(ds, o->max_bytes, ipath, d)))
        goto out;
    size_t src_px = (size_t)h * w, dst_px = (size_t)ds->h * (size_t)ds->w;
    if (!need_resize && ds->c == 1) {
        memcpy(ds->pixels, iv.data, (size_t)ds->n * src_px);
    } else {
        if (need_resize && !(tmp = malloc(dst_px))) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            goto out;
        }
        for (int i = 0; i < ds->n; i++) {
            const uint8_t *src = iv.data + (size_t)i * src_px;
            if (need_resize) {
                if ((rc = fs_image_resize_bilinear(tmp, ds->h, ds->w, src, (int)h, (int)w, 1))) {
                    fs_diag_set(d, rc, "out of memory");
                    goto out;
                }
                src = tmp;
            }
            uint8_t *dst = ds->pixels + (size_t)i * dst_px * (size_t)ds->c;
            for (int ch = 0; ch < ds->c; ch++) /* grey -> RGB replicates, like convert("RGB") */
                memcpy(dst + (size_t)ch * dst_px, src, dst_px);
        }
    }
    if (!o->drop_labels) {
        int maxl = -1;
        for (uint32_t i = 0; i < n; i++) {
            int l = lv.data[i];
            if (o->num_classes && l >= o->num_classes) {
                rc = fs_diag_set(d, FS_EFORMAT, "%s: label %d of image %u is out of range for %d "
                                 "classes", lpath, l, i, o->num_classes);
                goto out;
            }
            if (l > maxl)
                maxl = l;
        }
        ds->num_classes = o->num_classes ? o->num_classes : maxl + 1;
        ds->labels = malloc(sizeof(int32_t) * (size_t)ds->n);
        if (!ds->labels || number_class_names(ds)) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            goto out;
        }
        for (int i = 0; i < ds->n; i++)
            ds->labels[i] = lv.data[i];
    }
    rc = 0;
out:
    free(tmp);
    free(iraw);
    free(lraw);
    free(ipath);
    free(lpath);
    return rc;
}

/* ---------------------------------------------------------------- folders */

typedef struct {
    char *dir;   /* relative to the dataset root, "" for the root itself */
    char *name;
    int label;
} entry;

typedef struct {
    entry *v;
    size_t n, cap;
    size_t visited;
} entry_list;

static void entries_free(entry_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].dir);
        free(l->v[i].name);
    }
    free(l->v);
}

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->label != y->label)
        return x->label < y->label ? -1 : 1;
    int c = strcmp(x->dir, y->dir);
    return c ? c : strcmp(x->name, y->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* 1 for .png/.jpg/.jpeg, -1 for an image type torchvision reads and we do not, else 0. */
static int image_kind(const char *name)
{
    static const char *ours[] = {".png", ".jpg", ".jpeg"};
    static const char *theirs[] = {".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ours / sizeof *ours; i++) {
        size_t e = strlen(ours[i]);
        if (n >= e && strcasecmp(name + n - e, ours[i]) == 0)
            return 1;
    }
    for (size_t i = 0; i < sizeof theirs / sizeof *theirs; i++) {
        size_t e = strlen(theirs[i]);
        if (n >= e && strcasecmp(name + n - e, theirs[i]) == 0)
            return -1;
    }
    return 0;
}

static int add_entry(entry_list *l, const char *dir, const char *name, int label)
{
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 64;
        entry *nv = realloc(l->v, ncap * sizeof *nv);
        if (!nv)
            return FS_ENOMEM;
        l->v = nv;
        l->cap = ncap;
    }
    entry *e = &l->v[l->n];
    e->dir = xstrdup(dir);
    e->name = xstrdup(name);
    e->label = label;
    if (!e->dir || !e->name) {
        free(e->dir);
        free(e->name);
        return FS_ENOMEM;
    }
    l->n++;
    return 0;
}

/* Lists image files under root/rel (recursively when recurse). rel "" is root itself. */
static int walk(entry_list *l, const char *root, const char *rel, int label, int recurse,
                int depth, fs_diag *d)
{
    char *here = rel[0] ? path_join(root, rel) : xstrdup(root);
    if (!here)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    DIR *dir = opendir(here);
    if (!dir) {
        int rc = fs_diag_errno(d, errno == ENOENT ? FS_ENOTFOUND : FS_EIO, "%s: cannot open folder",
                               here);
        free(here);
        return rc;
    }
    int rc = 0;
    struct dirent *de;
    while ((errno = 0, de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (++l->visited > MAX_WALK_ENTRIES) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: more than %d directory entries", root,
                             MAX_WALK_ENTRIES);
            break;
        }
        char *full = path_join(here, de->d_name);
        char *sub = rel[0] ? path_join(rel, de->d_name) : xstrdup(de->d_name);
        struct stat st;
        if (!full || !sub) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
        } else if (stat(full, &st) != 0) {
            /* a dangling symlink: os.walk lists it as a file, which PIL then fails to open */
            if (image_kind(de->d_name) != 0)
                rc = fs_diag_errno(d, FS_EIO, "%s: cannot stat", full);
        } else if (S_ISDIR(st.st_mode)) {
            if (recurse) {
                if (depth >= MAX_WALK_DEPTH)
                    rc = fs_diag_set(d, FS_EFORMAT, "%s: folders nested deeper than %d (symlink "
                                     "loop?)", full, MAX_WALK_DEPTH);
                else
                    rc = walk(l, root, sub, label, recurse, depth + 1, d);
            }
        } else {
            int k = image_kind(de->d_name);
            if (k < 0)
                rc = fs_diag_set(d, FS_EUNSUPPORTED, "%s: image format not supported (fedslim "
                                 "reads PNG and JPEG); convert or remove it", full);
            else if (k > 0 && l->n >= FS_DATA_MAX_IMAGES)
                rc = fs_diag_set(d, FS_EFORMAT, "%s: more than %d images", root,
                                 FS_DATA_MAX_IMAGES);
            else if (k > 0 && add_entry(l, rel, de->d_name, label))
                rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
        }
        free(full);
        free(sub);
        if (rc)
            break;
    }
    if (!rc && errno != 0)
        rc = fs_diag_errno(d, FS_EIO, "%s: cannot read folder", here);
    closedir(dir);
    free(here);
    return rc;
}

/* The class subfolders of root, sorted by name (bytes), as torchvision's find_classes. */
static int list_classes(char ***names, int *count, const char *root, fs_diag *d)
{
    DIR *dir = opendir(root);
    if (!dir)
        return fs_diag_errno(d, errno == ENOENT ? FS_ENOTFOUND : FS_EIO, "%s: cannot open folder",
                             root);
    char **v = NULL;
    int n = 0, cap = 0, rc = 0;
    struct dirent *de;
    while ((errno = 0, de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *full = path_join(root, de->d_name);
        struct stat st;
        if (!full) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            break;
        }
        int isdir = stat(full, &st) == 0 && S_ISDIR(st.st_mode);
        free(full);
        if (!isdir)
            continue;
        if (n >= FS_DATA_MAX_CLASSES) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: more than %d class folders", root,
                             FS_DATA_MAX_CLASSES);
            break;
        }
        if (n == cap) {
            int ncap = cap ? cap * 2 : 16;
            char **nv = realloc(v, sizeof(char *) * (size_t)ncap);
            if (!nv) {
                rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
                break;
            }
            v = nv;
            cap = ncap;
        }
        if (!(v[n] = xstrdup(de->d_name))) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            break;
        }
        n++;
    }
    if (!rc && errno != 0)
        rc = fs_diag_errno(d, FS_EIO, "%s: cannot read folder", root);
    closedir(dir);
    if (rc) {
        free_strv(v, n);
        return rc;
    }
    if (n == 0) {
        free(v);
        return fs_diag_set(d, FS_ENOTFOUND, "%s: no class subfolders (an ImageFolder needs one "
                           "subfolder per class)", root);
    }
    qsort(v, (size_t)n, sizeof *v, cmp_str);
    *names = v;
    *count = n;
    return 0;
}

/* Decodes every listed file into ds (shape decided by the options or the first image). */
static int decode_entries(fs_dataset *ds, const entry_list *l, const char *root, const opts_t *o,
                          fs_diag *d)
{
    int rc = 0;
    uint8_t *file = NULL, *scaled = NULL;
    char *full = NULL;
    fs_image im = {0};
    ds->files = calloc((size_t)ds->n, sizeof(char *));
    if (!ds->files)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    ds->c = o->channels ? o->channels : 3; /* torchvision's loader: convert("RGB") */
    for (int i = 0; i < ds->n; i++) {
        const entry *e = &l->v[i];
        free(full);
        full = NULL;
        char *relname = e->dir[0] ? path_join(e->dir, e->name) : xstrdup(e->name);
        if (!relname || !(full = path_join(root, relname))) {
            free(relname);
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            goto out;
        }
        ds->files[i] = relname;
        size_t len = 0;
        if ((rc = fs_read_file(full, FS_DATA_MAX_FILE_BYTES, &file, &len, d)))
            goto out;
        size_t max_px = FS_DATA_MAX_IMAGE_PIXELS;
        if (o->max_bytes / 3 < max_px)
            max_px = o->max_bytes / 3 ? o->max_bytes / 3 : 1;
        if ((rc = fs_image_decode(&im, file, len, max_px, full, d)))
            goto out;
        free(file);
        file = NULL;
        if ((rc = fs_image_convert(&im, ds->c))) {
            fs_diag_set(d, rc, "%s: out of memory converting channels", full);
            goto out;
        }
        if (i == 0) {
            ds->h = o->height ? o->height : im.h;
            ds->w = o->width ? o->width : im.w;
            if ((rc = alloc_pixels(ds, o->max_bytes, root, d)))
                goto out;
            if (!(scaled = malloc((size_t)ds->h * (size_t)ds->w * (size_t)ds->c))) {
                rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
                goto out;
            }
        }
        const uint8_t *src = im.px;
        if (im.h != ds->h || im.w != ds->w) {
            if (!o->resize) {
                rc = fs_diag_set(d, FS_EFORMAT, "%s: image is %dx%d but the dataset is %dx%d (%s); "
                                 "enable resize or make the sizes agree", full, im.h, im.w,
                                 ds->h, ds->w, o->height ? "the size asked for" :
                                 "the size of its first image");
                goto out;
            }
            if ((rc = fs_image_resize_bilinear(scaled, ds->h, ds->w, im.px, im.h, im.w, ds->c))) {
                fs_diag_set(d, rc, "%s: out of memory resizing", full);
                goto out;
            }
            src = scaled;
        }
        hwc_to_chw(ds->pixels + (size_t)i * (size_t)ds->c * (size_t)ds->h * (size_t)ds->w, src,
                   ds->h, ds->w, ds->c);
        fs_image_release(&im);
    }
out:
    fs_image_release(&im);
    free(file);
    free(scaled);
    free(full);
    return rc;
}

static int open_folder(fs_dataset *ds, const char *root, int labeled, const opts_t *o, fs_diag *d)
{
    entry_list l = {0};
    char **classes = NULL;
    int nclass = 0, rc;
    if (labeled) {
        /* Entries carry their class index even when labels are dropped: it is the first sort
         * key, as in torchvision, where a class's files all come before the next class's. */
        if ((rc = list_classes(&classes, &nclass, root, d)))
            goto out;
        if (o->num_classes && !o->drop_labels && nclass != o->num_classes) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: %d class subfolders but %d classes were declared",
                             root, nclass, o->num_classes);
            goto out;
        }
        for (int k = 0; k < nclass; k++) {
            size_t before = l.n;
            if ((rc = walk(&l, root, classes[k], k, 1, 0, d)))
                goto out;
            if (l.n == before) {
                rc = fs_diag_set(d, FS_ENOTFOUND, "%s/%s: class folder has no PNG or JPEG images",
                                 root, classes[k]);
                goto out;
            }
        }
    } else {
        if ((rc = walk(&l, root, "", -1, 0, 0, d)))
            goto out;
    }
    if (l.n == 0) {
        rc = fs_diag_set(d, FS_ENOTFOUND, "%s: no PNG or JPEG images", root);
        goto out;
    }
    qsort(l.v, l.n, sizeof *l.v, cmp_entry);
    ds->n = (int)l.n;
    if (o->max_images && o->max_images < ds->n)
        ds->n = o->max_images;
    if ((rc = decode_entries(ds, &l, root, o, d)))
        goto out;
    if (labeled && !o->drop_labels) {
        ds->labels = malloc(sizeof(int32_t) * (size_t)ds->n);
        if (!ds->labels) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            goto out;
        }
        for (int i = 0; i < ds->n; i++)
            ds->labels[i] = l.v[i].label;
        ds->num_classes = nclass;
        ds->class_names = classes;
        classes = NULL;
    }
    rc = 0;
out:
    free_strv(classes, nclass);
    entries_free(&l);
    return rc;
}

/* ---------------------------------------------------------------- open */

int fs_dataset_open(fs_dataset **out, const char *spec, const fs_data_opts *opts, fs_diag *d)
{
    *out = NULL;
    if (!spec)
        return fs_diag_set(d, FS_EINVAL, "dataset spec is NULL");
    opts_t o;
    int rc = check_opts(&o, opts, spec, d);
    if (rc)
        return rc;
    fs_dataset *ds = calloc(1, sizeof *ds);
    if (!ds || !(ds->source = xstrdup(spec))) {
        free(ds);
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    const char *colon = strchr(spec, ':');
    const char *arg = colon ? colon + 1 : "";
    size_t kind = colon ? (size_t)(colon - spec) : 0;
    if (colon && !*arg) {
        rc = fs_diag_set(d, FS_EINVAL, "dataset spec '%s' has an empty path", spec);
    } else if (kind == 3 && strncmp(spec, "idx", 3) == 0) {
        rc = open_idx(ds, arg, &o, d);
    } else if (kind == 6 && strncmp(spec, "folder", 6) == 0) {
        rc = open_folder(ds, arg, 1, &o, d);
    } else if (kind == 9 && strncmp(spec, "unlabeled", 9) == 0) {
        rc = open_folder(ds, arg, 0, &o, d);
    } else {
        rc = fs_diag_set(d, FS_EINVAL, "dataset spec '%s': expected idx:DIR/PREFIX, folder:PATH "
                         "or unlabeled:PATH", spec);
    }
    if (rc) {
        /* keep the invariants fs_dataset_free relies on: files has n slots or is NULL */
        fs_dataset_free(ds);
        return rc;
    }
    *out = ds;
    return 0;
}

/* ---------------------------------------------------------------- subset, counts */

int fs_dataset_subset(fs_dataset **out, const fs_dataset *ds, const int32_t *idx, int n,
                      fs_diag *d)
{
    *out = NULL;
    if (n < 0 || (n > 0 && !idx))
        return fs_diag_set(d, FS_EINVAL, "%s: subset of %d samples", ds->source, n);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= ds->n)
            return fs_diag_set(d, FS_EINVAL, "%s: subset index %d (entry %d) out of range [0, %d)",
                               ds->source, idx[i], i, ds->n);
    fs_dataset *s = calloc(1, sizeof *s);
    if (!s)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    s->n = n;
    s->c = ds->c;
    s->h = ds->h;
    s->w = ds->w;
    size_t per = (size_t)ds->c * (size_t)ds->h * (size_t)ds->w;
    size_t srclen = strlen(ds->source);
    int rc = FS_ENOMEM;
    if (!(s->source = malloc(srclen + 16)))
        goto fail;
    snprintf(s->source, srclen + 16, "%s[subset]", ds->source);
    if (!(s->pixels = fs_alloc(per * (size_t)(n ? n : 1))))
        goto fail;
    for (int i = 0; i < n; i++)
        memcpy(s->pixels + (size_t)i * per, fs_dataset_image(ds, idx[i]), per);
    if (ds->labels) {
        if (!(s->labels = malloc(sizeof(int32_t) * (size_t)(n ? n : 1))))
            goto fail;
        for (int i = 0; i < n; i++)
            s->labels[i] = ds->labels[idx[i]];
    }
    if (ds->class_names) {
        if (!(s->class_names = calloc((size_t)ds->num_classes, sizeof(char *))))
            goto fail;
        s->num_classes = ds->num_classes;
        for (int k = 0; k < ds->num_classes; k++)
            if (!(s->class_names[k] = xstrdup(ds->class_names[k])))
                goto fail;
    }
    s->num_classes = ds->num_classes;
    if (ds->files) {
        if (!(s->files = calloc((size_t)(n ? n : 1), sizeof(char *))))
            goto fail;
        for (int i = 0; i < n; i++)
            if (!(s->files[i] = xstrdup(ds->files[idx[i]])))
                goto fail;
    }
    *out = s;
    return 0;
fail:
    fs_dataset_free(s);
    return fs_diag_set(d, rc, "%s: out of memory copying a subset of %d samples", ds->source, n);
}

int fs_dataset_class_counts(const fs_dataset *ds, const int32_t *idx, int n, int64_t *counts,
                            fs_diag *d)
{
    if (!ds->labels)
        return fs_diag_set(d, FS_EINVAL, "%s: unlabeled dataset has no class counts", ds->source);
    int total = idx ? n : ds->n;
    if (total < 0)
        return fs_diag_set(d, FS_EINVAL, "%s: negative count %d", ds->source, n);
    for (int i = 0; i < total; i++)
        if (idx && (idx[i] < 0 || idx[i] >= ds->n))
            return fs_diag_set(d, FS_EINVAL, "%s: index %d (entry %d) out of range [0, %d)",
                               ds->source, idx[i], i, ds->n);
    memset(counts, 0, sizeof(int64_t) * (size_t)ds->num_classes);
    for (int i = 0; i < total; i++)
        counts[ds->labels[idx ? idx[i] : i]]++;
    return 0;
}

int fs_dataset_channel_sums(const fs_dataset *ds, const int32_t *idx, int n, double *sum,
                            double *sumsq, int64_t *count, fs_diag *d)
{
    int total = idx ? n : ds->n;
    if (total < 0)
        return fs_diag_set(d, FS_EINVAL, "%s: negative count %d", ds->source, n);
    for (int i = 0; i < total; i++)
        if (idx && (idx[i] < 0 || idx[i] >= ds->n))
            return fs_diag_set(d, FS_EINVAL, "%s: index %d (entry %d) out of range [0, %d)",
                               ds->source, idx[i], i, ds->n);
    size_t plane = (size_t)ds->h * (size_t)ds->w;
    for (int ch = 0; ch < ds->c; ch++) {
        /* integer histogram per channel: exact, and no rounding drift over 10^8 pixels */
        uint64_t hist[256] = {0};
        for (int i = 0; i < total; i++) {
            const uint8_t *p = fs_dataset_image(ds, idx ? idx[i] : i) + (size_t)ch * plane;
            for (size_t j = 0; j < plane; j++)
                hist[p[j]]++;
        }
        double s = 0.0, s2 = 0.0;
        for (int v = 0; v < 256; v++) {
            double x = v / 255.0;
            s += (double)hist[v] * x;
            s2 += (double)hist[v] * x * x;
        }
        sum[ch] = s;
        sumsq[ch] = s2;
    }
    *count = (int64_t)total * (int64_t)plane;
    return 0;
}
