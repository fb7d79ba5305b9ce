fs_test(test_quant_nm LIBS fs_compress LABELS unit compress)
