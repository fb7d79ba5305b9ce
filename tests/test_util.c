/* test_util.c — diagnostics, checked arithmetic, the deterministic RNG and atomic file writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_rng.h"
#include "fs_util.h"

static void diag_formats_and_prefixes(void **state)
{
    (void)state;
    fs_diag d = {0};
    assert_int_equal(fs_diag_set(&d, FS_EFORMAT, "tensor '%s' bad", "fc.weight"), FS_EFORMAT);
    assert_int_equal(fs_diag_prefix(&d, "%s", "m.safetensors"), FS_EFORMAT);
    assert_string_equal(d.msg, "m.safetensors: tensor 'fc.weight' bad");
    assert_string_equal(fs_diag_text(NULL, FS_ENOMEM), "out of memory");
}

static void checked_arithmetic_detects_overflow(void **state)
{
    (void)state;
    size_t r;
    assert_int_equal(fs_mul_size(SIZE_MAX / 2, 3, &r), FS_EFORMAT);
    assert_int_equal(fs_mul_size(1000, 1000, &r), 0);
    assert_int_equal(r, 1000000);
    assert_int_equal(fs_add_size(SIZE_MAX, 1, &r), FS_EFORMAT);
}

static void rng_is_deterministic_and_uniform(void **state)
{
    (void)state;
    fs_rng a, b;
    fs_rng_seed(&a, 42);
    fs_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++)
        assert_true(fs_rng_u64(&a) == fs_rng_u64(&b));
    int counts[10] = {0};
    for (int i = 0; i < 100000; i++)
        counts[fs_rng_below(&a, 10)]++;
    for (int i = 0; i < 10; i++)
        assert_true(counts[i] > 9500 && counts[i] < 10500);
    double s = 0, s2 = 0;
    for (int i = 0; i < 100000; i++) {
        double x = fs_rng_normal(&a);
        s += x;
        s2 += x * x;
    }
    assert_true(fabs(s / 100000) < 0.02);
    assert_true(fabs(s2 / 100000 - 1.0) < 0.03);
}

static void atomic_write_then_read_back(void **state)
{
    (void)state;
    char path[] = "/tmp/fs_test_util_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    fs_diag d = {0};
    assert_int_equal(fs_write_file_atomic(path, "hello", 5, &d), 0);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(fs_read_file(path, 1 << 20, &buf, &len, &d), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(buf, "hello", 5);
    free(buf);
    assert_int_equal(fs_read_file(path, 3, &buf, &len, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, path));
    unlink(path);
    assert_int_equal(fs_read_file(path, 3, &buf, &len, &d), FS_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(diag_formats_and_prefixes),
        cmocka_unit_test(checked_arithmetic_detects_overflow),
        cmocka_unit_test(rng_is_deterministic_and_uniform),
        cmocka_unit_test(atomic_write_then_read_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
