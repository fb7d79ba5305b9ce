fs_test(test_prune_lowrank LIBS fs_compress LABELS unit compress)
