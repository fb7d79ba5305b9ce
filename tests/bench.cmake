# bench/: bench_model's output format and argument checks, merge.py's pairing and ratio direction,
# and (when PyTorch is installed) that torch_bench.py builds networks of the same size.
fs_script_test(test_bench
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_bench.sh
    LABELS unit bench TIMEOUT 120)
