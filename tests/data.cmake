# data: dataset readers, samplers, split, batches (tests/test_data.c); fuzzers for the IDX/gzip
# parser and the PNG/JPEG decoder.
fs_test(test_data LIBS fs_data PkgConfig::PNG JPEG::JPEG PkgConfig::ZLIB LABELS unit data
    TIMEOUT 120)
fs_fuzz(fuzz_idx SOURCES fuzz_idx.c LIBS fs_data CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_idx
    SECONDS 20)
fs_fuzz(fuzz_image SOURCES fuzz_image.c LIBS fs_data
    CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_image SECONDS 20)
