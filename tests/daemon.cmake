# daemon: configuration loader and schemas, journal sink, notify/watchdog, signals, loop helper.
fs_test(test_daemon_config SOURCES test_daemon_config.c LIBS fs_daemon LABELS unit daemon
    TIMEOUT 60)
if(FS_HAVE_INIH_RUNTIME_OPTIONS AND TARGET test_daemon_config)
    target_compile_definitions(test_daemon_config PRIVATE FS_HAVE_INIH_RUNTIME_OPTIONS=1)
endif()
fs_test(test_daemon SOURCES test_daemon.c LIBS fs_daemon LABELS unit daemon TIMEOUT 60)

if(NOT FEDSLIM_FUZZ)
    # A small daemon-like program (fs_daemon + pthread OpenBLAS) that test_daemon_notify runs under
    # a fake NOTIFY_SOCKET: READY, watchdog pings, SIGHUP reload, SIGTERM stop.
    add_executable(test_daemon_helper test_daemon_helper.c)
    target_link_libraries(test_daemon_helper PRIVATE fs_daemon PkgConfig::OPENBLAS fs_build_flags)
    target_compile_options(test_daemon_helper PRIVATE -UNDEBUG)
    fs_test(test_daemon_notify SOURCES test_daemon_notify.c LIBS fs_daemon LABELS unit daemon
        TIMEOUT 60)
    add_dependencies(test_daemon_notify test_daemon_helper)
endif()

fs_fuzz(fuzz_config SOURCES fuzz_config.c LIBS fs_daemon
    CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_config SECONDS 20 MAX_LEN 8192)
