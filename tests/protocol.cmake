# protocol: wire format, sessions, keys, allow-list (test_wire); CURVE transport on real sockets
# over tcp://127.0.0.1:* (test_transport); libFuzzer targets for the decoder and the allow-list.
fs_test(test_wire SOURCES test_wire.c LIBS fs_protocol LABELS unit protocol TIMEOUT 120)
fs_test(test_transport SOURCES test_transport.c LIBS fs_protocol LABELS unit protocol TIMEOUT 180)
fs_fuzz(fuzz_wire SOURCES fuzz_wire.c LIBS fs_protocol
        CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_wire SECONDS 30)
fs_fuzz(fuzz_allowlist SOURCES fuzz_allowlist.c LIBS fs_protocol
        CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/fuzz_allowlist SECONDS 30)
