# fedslimctl: the admin CLI for the coordinator's control socket (docs/control.md). Included from
# cli/CMakeLists.txt. Talks JSON lines over a Unix socket: jansson for JSON, libsodium for base64.
add_executable(fedslimctl fedslimctl.c)
target_compile_definitions(fedslimctl PRIVATE FS_VERSION="${PROJECT_VERSION}")
target_link_libraries(fedslimctl PRIVATE fs_util PkgConfig::JANSSON PkgConfig::SODIUM
    fs_build_flags)
