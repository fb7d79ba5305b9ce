# control: the coordinator's control socket server (coordinator/control.c) against the real
# fedslimctl binary, over real Unix sockets (docs/control.md).
find_package(Threads REQUIRED)
fs_test(test_control SOURCES test_control.c LIBS fs_coordinator PkgConfig::SODIUM Threads::Threads
    LABELS unit control TIMEOUT 120)
if(TARGET test_control)
    add_dependencies(test_control fedslimctl)
endif()

fs_fuzz(fuzz_control SOURCES fuzz_control.c LIBS fs_coordinator
    CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_control SECONDS 20 MAX_LEN 65536)
