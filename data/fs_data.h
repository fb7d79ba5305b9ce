/*
 * fs_data.h — datasets at a site: readers for IDX files (the MNIST format, plain or gzip), ImageFolder
 * trees (one subfolder per class, PNG or JPEG) and flat folders of unlabeled images; few-shot samplers
 * (balanced, and PRACTISE's class-then-image rule); a non-IID Dirichlet split for federated demos;
 * and the batch filler that turns uint8 images into normalised NCHW float32 with torchvision-style
 * augmentation.
 *
 * Everything here is plain data and pure functions of (dataset, indices, seed): no globals, no
 * printing, no network. Nothing in this library decides what leaves a site; callers must send only
 * sums and counts (DESIGN "Data at a site"); fs_dataset_class_counts exists for such summaries.
 *
 * Thread-safety: every function is reentrant. A dataset is immutable after fs_dataset_open, so any
 * number of threads may read it (fs_batch_fill) at once; each thread needs its own fs_rng.
 */
#ifndef FS_DATA_H
#define FS_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fs_rng.h"
#include "fs_util.h"

/* Limits applied to every reader (STYLE C10): checked before anything is allocated. */
#define FS_DATA_MAX_SIDE 16384                 /* pixels per image side */
#define FS_DATA_MAX_IMAGE_PIXELS 89478485      /* w*h of one decoded image: PIL's MAX_IMAGE_PIXELS */
#define FS_DATA_MAX_IMAGES (1 << 28)           /* images per dataset */
#define FS_DATA_MAX_CLASSES 100000             /* class subfolders / declared classes */
#define FS_DATA_DEFAULT_MAX_BYTES ((size_t)4 << 30) /* decoded pixels per dataset, default */
#define FS_DATA_MAX_FILE_BYTES ((size_t)256 << 20)  /* one image file on disk */

/*
 * A dataset held in memory: n images of c x h x w uint8 pixels, and their labels.
 * Transparent plain data (STYLE C7): read the fields directly; never modify them after opening.
 * Owned by whoever opened it; free with fs_dataset_free.
 */
typedef struct fs_dataset {
    int n;                 /* number of images */
    int c, h, w;           /* channels (1 grey or 3 RGB), height, width: same for every image */
    uint8_t *pixels;       /* [n, c, h, w] row-major (CHW per image), 64-byte aligned */
    int32_t *labels;       /* [n] in [0, num_classes), or NULL when unlabeled */
    int num_classes;       /* number of classes (0 when unlabeled) */
    char **class_names;    /* [num_classes]: folder names for ImageFolder, "0".."K-1" for IDX;
                              NULL when unlabeled */
    char **files;          /* [n] path of each image relative to the dataset root (folders),
                              or NULL (IDX) */
    char *source;          /* the spec it was opened from (or "SPEC[subset]"), for messages */
} fs_dataset;

/*
 * Options for fs_dataset_open. A zero-initialised struct (or NULL) gives the defaults.
 *   channels    0: the source's own (IDX 1; folders 3, since torchvision's loader converts every
 *               image to RGB); 1 or 3: convert like PIL's Image.convert ("L": ITU-R 601-2 luma
 *               L = (19595 R + 38470 G + 7471 B + 32768) >> 16; "RGB": replicate grey; alpha is
 *               dropped, palettes are expanded, 16-bit samples keep their high byte as PIL does).
 *   height,width  0: the size of the first image (IDX: the file's). Otherwise the wanted size.
 *   resize      0: an image whose size differs from the wanted size is an error naming the file;
 *               1: resample it with Pillow's BILINEAR filter (a triangle filter widened by the scale
 *               factor when shrinking, i.e. antialiased; 22-bit fixed-point coefficients, horizontal
 *               pass then vertical, as PIL.Image.resize / torchvision.transforms.Resize on PIL images).
 *   max_images  0: all; otherwise keep only the first max_images (IDX: file order; folders: the
 *               sorted listing order, so an ImageFolder keeps the first classes first).
 *   num_classes 0: infer (IDX: largest label + 1; ImageFolder: number of subfolders); otherwise
 *               the declared count: a label >= num_classes (IDX) or a different number of class
 *               subfolders is an error.
 *   drop_labels 1: ignore labels (an IDX labels file is not even read): an unlabeled dataset.
 *   max_bytes   ceiling on the decoded pixel bytes; 0 = FS_DATA_DEFAULT_MAX_BYTES.
 */
typedef struct {
    int channels;
    int height, width;
    int resize;
    int max_images;
    int num_classes;
    int drop_labels;
    size_t max_bytes;
} fs_data_opts;

/*
 * Opens a dataset from a spec:
 *   idx:DIR/PREFIX   DIR/PREFIX-images-idx3-ubyte and DIR/PREFIX-labels-idx1-ubyte, each plain or
 *                    with .gz (gzip is recognised by content; the plain name is tried first, and
 *                    "PREFIX-images.idx3-ubyte" is accepted too). Images must be ubyte [n, h, w],
 *                    labels ubyte [n]. Example: idx:/usr/share/datasets/fashion-mnist/t10k.
 *   folder:PATH      ImageFolder as torchvision: class = each subfolder of PATH (sorted by name,
 *                    byte order), label = its rank; images = files below it (recursively, following
 *                    symlinks) whose names end in .png/.jpg/.jpeg (any case), sorted by (directory,
 *                    name) like sorted(os.walk()). Other image extensions torchvision knows (.bmp,
 *                    .ppm, .pgm, .tif, .tiff, .webp) are an error (unsupported), not skipped; other
 *                    files and files directly in PATH are ignored. The format is decided by
 *                    content, not by extension.
 *   unlabeled:PATH   the .png/.jpg/.jpeg files directly in PATH (subfolders ignored), sorted by name.
 * o: may be NULL (defaults). On success *out is a new dataset (returns owned: fs_dataset_free).
 * Errors (*out is set to NULL): FS_EINVAL bad spec or options; FS_ENOTFOUND missing
 * file/folder, empty folder, no class subfolders; FS_EIO read errors; FS_EFORMAT malformed files
 * (wrong IDX magic, dims that disagree with the file size, label count != image count, label out of
 * range, truncated gzip, corrupt PNG/JPEG, size mismatch without resize, size limits);
 * FS_EUNSUPPORTED image formats we do not read; FS_ENOMEM. d names the file and the problem.
 */
FS_MUST_CHECK int fs_dataset_open(fs_dataset **out, const char *spec, const fs_data_opts *o,
                                  fs_diag *d);

/* Frees a dataset and everything it owns. NULL-safe. */
void fs_dataset_free(fs_dataset *ds);

/* Pixels of image i: c*h*w bytes, CHW. i must be in [0, n) (caller contract, asserted). */
const uint8_t *fs_dataset_image(const fs_dataset *ds, int i);

/*
 * A new dataset holding copies of samples idx[0..n) in that order (duplicates allowed), with the
 * same shape, classes and class names. borrows ds and idx; *out returns owned.
 * FS_EINVAL if n < 0 or an index is out of range; FS_ENOMEM.
 */
FS_MUST_CHECK int fs_dataset_subset(fs_dataset **out, const fs_dataset *ds, const int32_t *idx,
                                    int n, fs_diag *d);

/*
 * Per-class counts of the samples idx[0..n) (idx NULL: the whole dataset, n ignored) into
 * counts[0..num_classes). These counts, not the samples, are what a site may report.
 * FS_EINVAL if the dataset is unlabeled or an index is out of range.
 */
FS_MUST_CHECK int fs_dataset_class_counts(const fs_dataset *ds, const int32_t *idx, int n,
                                          int64_t *counts, fs_diag *d);

/*
 * Per-channel sums over the samples idx[0..n) (idx NULL: the whole dataset, n ignored) of x and x*x
 * with x = pixel / 255, and the number of pixels summed per channel, into sum[c], sumsq[c], *count:
 * mean = sum / count, var = sumsq / count - mean^2. Sums (not per-sample values) are what a site may
 * report, so a federation can compute global Normalize() constants. FS_EINVAL on a bad index.
 */
FS_MUST_CHECK int fs_dataset_channel_sums(const fs_dataset *ds, const int32_t *idx, int n,
                                          double *sum, double *sumsq, int64_t *count, fs_diag *d);

/*
 * Balanced few-shot sample: within each class, a seeded shuffle of that class's images (in dataset
 * order before shuffling; each class has its own stream forked from the seed with the class as tag,
 * so one class's draw does not depend on the others) and its first n_per_class images. A class with
 * fewer images contributes all of them (the caller can check with fs_dataset_class_counts).
 * Output: *idx_out (returns owned, free()) holds *n_out indices in ascending order.
 * FS_EINVAL if unlabeled or n_per_class < 1.
 */
FS_MUST_CHECK int fs_sample_per_class(int32_t **idx_out, int *n_out, const fs_dataset *ds,
                                      int n_per_class, uint64_t seed, fs_diag *d);

/*
 * n_total distinct samples. Labeled: PRACTISE's FewShotImageFolder rule (ALGORITHMS a.7): repeat
 * until n_total are chosen: pick a class uniformly at random, then an image of it uniformly at
 * random, and reject the pair if that image was already chosen (classes with no images left are
 * rejected too). PRACTISE's branch for n >= 1000 on ImageNet (n/1000 per class) is
 * fs_sample_per_class(n / num_classes). Unlabeled datasets: fs_sample_uniform.
 * Output: *idx_out (returns owned, free()) holds n_total indices in ascending order.
 * FS_EINVAL if n_total < 1 or n_total > ds->n.
 */
FS_MUST_CHECK int fs_sample_total(int32_t **idx_out, const fs_dataset *ds, int n_total,
                                  uint64_t seed, fs_diag *d);

/*
 * n_total distinct samples drawn uniformly from the whole dataset, ignoring labels: the first
 * n_total of a seeded (partial Fisher-Yates) shuffle, as PRACTISE's CUB / Places365 subsets
 * (np.random.choice(len, n, replace=False)). Output as fs_sample_total.
 */
FS_MUST_CHECK int fs_sample_uniform(int32_t **idx_out, const fs_dataset *ds, int n_total,
                                    uint64_t seed, fs_diag *d);

/* A split of one dataset into disjoint per-site index lists. */
typedef struct {
    int n_sites;
    int num_classes;
    int *count;         /* [n_sites] images given to each site */
    int32_t **idx;      /* [n_sites] arrays of count[s] indices, ascending, disjoint across sites */
    double *props;      /* [n_sites * num_classes] the class proportions drawn for each site */
} fs_split;

/*
 * Non-IID split for federated experiments. For each site in turn: draw class proportions
 * p ~ Dirichlet(alpha, ..., alpha) (gamma variates by Marsaglia-Tsang on fs_rng, with the a < 1
 * boost computed in log space so tiny alpha does not underflow), turn per_site * p into integer
 * targets by largest remainder, and take that many images of each class from a per-class seeded
 * shuffle shared by all sites (so sites never overlap). When a class runs out, the shortfall is
 * taken from the classes with images left, largest p first. Every site gets exactly per_site images.
 * Small alpha (0.1) gives sites dominated by one or two classes; large alpha (100) near-IID sites.
 * *out (returns owned: fs_split_free). FS_EINVAL if unlabeled, n_sites < 1, per_site < 1,
 * alpha <= 0 or not finite, or n_sites * per_site > ds->n.
 */
FS_MUST_CHECK int fs_split_dirichlet(fs_split **out, const fs_dataset *ds, int n_sites,
                                     double alpha, int per_site, uint64_t seed, fs_diag *d);
void fs_split_free(fs_split *s);

/* Training-time augmentation, as torchvision transforms in this order. */
typedef struct {
    int pad;    /* RandomCrop(size=(h, w), padding=pad): zero-pad each side by pad pixels, then crop
                   h x w at a uniformly random offset (top i then left j, each in [0, 2 pad]); 0: off */
    int hflip;  /* RandomHorizontalFlip(p=0.5) after the crop; 0: off */
} fs_augment;

/*
 * Fills a batch: for each k < n, image idx[k] as float32 [c, h, w] at out + k*c*h*w, computed like
 * torchvision ToTensor + Normalize: (pixel / 255 - mean[ch]) / std[ch] (float32 arithmetic).
 * mean/std: [ds->c] each, or NULL for 0 / 1. Augmentation (aug NULL or all-zero: none) works on
 * the raw image before normalisation, so padded pixels are 0 on the [0, 1] image, i.e.
 * -mean/std after normalisation, as in torchvision. Random draws per image, in order: crop top,
 * crop left (fs_rng_below(2 pad + 1) each, when pad > 0), flip (fs_rng_uniform < 0.5, when hflip),
 * so the result is a pure function of the inputs and the rng state (rng may be NULL without aug).
 * labels_out: [n] or NULL; -1 for an unlabeled dataset.
 * out: n*c*h*w floats, caller-owned. FS_EINVAL for an out-of-range index, std of 0, pad < 0 or
 * pad > FS_DATA_MAX_SIDE, or augmentation without an rng.
 */
FS_MUST_CHECK int fs_batch_fill(float *out, int32_t *labels_out, const fs_dataset *ds,
                                const int32_t *idx, int n, const float *mean, const float *std,
                                const fs_augment *aug, fs_rng *rng, fs_diag *d);

#endif
