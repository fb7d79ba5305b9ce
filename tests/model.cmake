fs_test(test_model LIBS fs_model LABELS unit model)
