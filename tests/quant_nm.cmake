fs_test(test_quant_nm LIBS fs_compress LABELS unit compress)
fs_script_test(test_torch_export COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_torch_export.sh LABELS integration model)
fs_fuzz(fuzz_model_load SOURCES fuzz_model_load.c LIBS fs_model
        CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_model_load SECONDS 20)
