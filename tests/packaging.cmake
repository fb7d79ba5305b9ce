# packaging: unit files (systemd-analyze verify + security) and the Debian package (cpack, dpkg-deb,
# lintian). The programs the package must contain are those whose targets exist in this tree
# (evaluated at generate time, so targets defined after tests/ count too).
set(FS_PKG_PROGRAMS "")
foreach(prog fedslim fedslimctl fedslim-coordinator fedslim-agent)
    string(APPEND FS_PKG_PROGRAMS "$<$<TARGET_EXISTS:${prog}>:${prog} >")
endforeach()

# Installs this build tree into a temporary root (DESTDIR) and checks the units there.
fs_script_test(test_units
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_units.sh ${CMAKE_BINARY_DIR} "${FS_PKG_PROGRAMS}"
    LABELS unit packaging TIMEOUT 120)

# Builds its own Release tree (no sanitizers, prefix /usr) under the test's directory, runs
# cpack there and inspects the .deb: a sanitizer build must not be packaged.
fs_script_test(test_deb
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_deb.sh ${CMAKE_CURRENT_BINARY_DIR}/deb-build
            "${FS_PKG_PROGRAMS}" ${CMAKE_C_COMPILER}
    LABELS packaging TIMEOUT 900)
