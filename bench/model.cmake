# bench_model: ResNet-20 / MLP training throughput and inference latency (bench/run.sh compares
# it with bench/torch_bench.py, configuration by configuration).
if(NOT FEDSLIM_FUZZ)
    add_executable(bench_model bench_model.c)
    target_link_libraries(bench_model PRIVATE fs_model fs_kernels fs_util fs_build_flags)
endif()
