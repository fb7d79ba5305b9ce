fs_test(test_compress LIBS fs_compress LABELS unit compress)
