# Model file formats (model/safetensors.c, model/arch.c, model/arch_infer.c).
fs_test(test_safetensors LIBS fs_model LABELS unit model)
fs_test(test_arch LIBS fs_model LABELS unit model)
fs_fuzz(fuzz_safetensors SOURCES fuzz_safetensors.c LIBS fs_model
        CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_safetensors SECONDS 30)
fs_fuzz(fuzz_arch_json SOURCES fuzz_arch_json.c LIBS fs_model
        CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_arch_json SECONDS 30)
