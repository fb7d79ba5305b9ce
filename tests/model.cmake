fs_test(test_model LIBS fs_model LABELS unit model)
fs_test(test_pytorch_logits LIBS fs_model LABELS unit model)
fs_script_test(test_cli_model COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_cli_model.sh LABELS integration model)
