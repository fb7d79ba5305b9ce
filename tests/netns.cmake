# The multi-host rehearsal: a coordinator and three agents in network namespaces of their own,
# started as their systemd units would start them, with a link taken down, a throttled link through
# a stalling/cutting TCP proxy (tests/test_netns.sh, tests/netns_proxy.py; docs/operations.md
# "Rehearsing a multi-host install"). Needs root and `ip netns`: exits 77 (skipped) otherwise.
# RUN_SERIAL: its step timeouts are short (8 s), so it must not share the cores with other tests.
# `make check` runs it once, through `make check-netns` (ctest -L netns in build/check); the general
# ctest pass of `make check` leaves the label out.
fs_script_test(test_netns COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/test_netns.sh
               LABELS integration netns TIMEOUT 420)
if(TEST test_netns)
    set_tests_properties(test_netns PROPERTIES SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
endif()
