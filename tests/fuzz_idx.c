/* fuzz_idx.c — the IDX reader on arbitrary bytes: gzip inflate (with a small output limit, as the
 * reader caps real files) followed by the IDX parser, with every dimensionality accepted and the
 * label/image shapes the dataset reader asks for. */
#include <stdint.h>
#include <stdlib.h>

#include "data_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fs_diag d;
    const uint8_t *buf = data;
    size_t len = size;
    uint8_t *plain = NULL;
    if (fs_data_is_gzip(data, size)) {
        if (fs_data_gunzip(&plain, &len, data, size, 1 << 20, "fuzz.gz", &d) != 0)
            return 0;
        buf = plain;
    }
    for (int want = 0; want <= 3; want += (want == 0 ? 1 : 2)) { /* 0 (any), 1 labels, 3 images */
        fs_idx_view v;
        if (fs_idx_parse(&v, buf, len, want, "fuzz", &d) == 0) {
            /* touch every byte the view claims, so a wrong count is caught by ASan */
            unsigned acc = 0;
            for (size_t i = 0; i < v.count; i++)
                acc += v.data[i];
            if (acc == 0xFFFFFFFFu)
                abort(); /* unreachable for inputs under 16 MiB; keeps the loop alive */
        }
    }
    free(plain);
    return 0;
}
