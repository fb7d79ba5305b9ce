/* fuzz_image.c — the PNG/JPEG decoder (libpng / libjpeg-turbo behind our longjmp error handlers)
 * on arbitrary bytes, then channel conversion and a resize of whatever decoded. A small pixel cap
 * keeps each run fast, as the dataset reader's cap does for real files. */
#include <stdint.h>
#include <stdlib.h>

#include "data_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fs_diag d;
    fs_image im = {0};
    if (fs_image_decode(&im, data, size, 1 << 18, "fuzz", &d) != 0)
        return 0;
    if (fs_image_convert(&im, im.c == 1 ? 3 : 1) == 0) {
        int oh = im.h / 2 + 1, ow = im.w / 3 + 1;
        uint8_t *out = malloc((size_t)oh * (size_t)ow * (size_t)im.c);
        if (out) {
            int rc = fs_image_resize_bilinear(out, oh, ow, im.px, im.h, im.w, im.c);
            (void)rc; /* only FS_ENOMEM is possible */
            free(out);
        }
    }
    fs_image_release(&im);
    return 0;
}
