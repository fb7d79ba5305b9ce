fs_test(test_util LIBS fs_util LABELS unit util)
