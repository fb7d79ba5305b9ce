# bench_transfer: 64 MiB coordinator -> agent over loopback with CURVE (fs_link), plain ZeroMQ,
# raw TCP, and crypto_box on one core (protocol part).
if(NOT FEDSLIM_FUZZ)
    add_executable(bench_transfer bench_transfer.c)
    target_link_libraries(bench_transfer PRIVATE fs_protocol fs_util fs_build_flags)
endif()
