/*
 * batch.c — uint8 images to normalised float32 NCHW batches, as torchvision's
 * RandomCrop(padding) -> RandomHorizontalFlip -> ToTensor -> Normalize would make them. A 256-entry
 * table per channel holds (v / 255 - mean) / std computed in float32, as the tensor ops do, so the
 * values are bit-identical to PyTorch's for the same crop and flip.
 */
#include <math.h>
#include <string.h>

#include "data_internal.h"

int fs_batch_fill(float *out, int32_t *labels_out, const fs_dataset *ds, const int32_t *idx, int n,
                  const float *mean, const float *std, const fs_augment *aug, fs_rng *rng,
                  fs_diag *d)
{
    const int C = ds->c, H = ds->h, W = ds->w;
    int pad = aug ? aug->pad : 0;
    int flip = aug ? aug->hflip != 0 : 0;
    if (n < 0 || pad < 0 || pad > FS_DATA_MAX_SIDE)
        return fs_diag_set(d, FS_EINVAL, "%s: batch of %d with padding %d", ds->source, n, pad);
    if ((pad > 0 || flip) && !rng)
        return fs_diag_set(d, FS_EINVAL, "%s: augmentation needs a random generator", ds->source);
    for (int k = 0; k < n; k++)
        if (idx[k] < 0 || idx[k] >= ds->n)
            return fs_diag_set(d, FS_EINVAL, "%s: batch index %d (entry %d) out of range [0, %d)",
                               ds->source, idx[k], k, ds->n);
    float lut[3][256];
    FS_ASSERT(C >= 1 && C <= 3);
    for (int ch = 0; ch < C; ch++) {
        float m = mean ? mean[ch] : 0.0f;
        float s = std ? std[ch] : 1.0f;
        if (!(s != 0.0f) || !isfinite(s) || !isfinite(m))
            return fs_diag_set(d, FS_EINVAL, "%s: channel %d: mean %g / std %g unusable",
                               ds->source, ch, (double)m, (double)s);
        for (int v = 0; v < 256; v++)
            lut[ch][v] = ((float)v / 255.0f - m) / s;
    }
    const size_t plane = (size_t)H * (size_t)W;
    for (int k = 0; k < n; k++) {
        const uint8_t *img = fs_dataset_image(ds, idx[k]);
        float *o = out + (size_t)k * (size_t)C * plane;
        if (labels_out)
            labels_out[k] = ds->labels ? ds->labels[idx[k]] : -1;
        int dy = 0, dx = 0, f = 0;
        if (pad > 0) {
            /* torchvision RandomCrop.get_params: i = randint(0, h + 2p - h + 1), then j */
            dy = (int)fs_rng_below(rng, (uint64_t)(2 * pad + 1)) - pad;
            dx = (int)fs_rng_below(rng, (uint64_t)(2 * pad + 1)) - pad;
        }
        if (flip)
            f = fs_rng_uniform(rng) < 0.5f;
        if (dy == 0 && dx == 0 && !f) {
            for (int ch = 0; ch < C; ch++)
                for (size_t i = 0; i < plane; i++)
                    o[(size_t)ch * plane + i] = lut[ch][img[(size_t)ch * plane + i]];
            continue;
        }
        /* out(y, x) = padded(y + pad + dy, x' + pad + dx), x' = W-1-x when flipped */
        for (int ch = 0; ch < C; ch++) {
            const uint8_t *src = img + (size_t)ch * plane;
            float *dst = o + (size_t)ch * plane;
            float zero = lut[ch][0];
            for (int y = 0; y < H; y++) {
                int sy = y + dy;
                float *row = dst + (size_t)y * W;
                if (sy < 0 || sy >= H) {
                    for (int x = 0; x < W; x++)
                        row[x] = zero;
                    continue;
                }
                const uint8_t *srow = src + (size_t)sy * W;
                for (int x = 0; x < W; x++) {
                    int sx = (f ? W - 1 - x : x) + dx;
                    row[x] = (sx < 0 || sx >= W) ? zero : lut[ch][srow[sx]];
                }
            }
        }
    }
    return 0;
}
