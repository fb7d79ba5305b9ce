/*
 * config_internal.h — pieces shared by the two daemon schemas (config_coordinator.c,
 * config_agent.c). Private to daemon/.
 */
#ifndef FS_CONFIG_INTERNAL_H
#define FS_CONFIG_INTERNAL_H

#include <stddef.h>

#include "fs_config.h"

#define FS_KIB (1ll << 10)
#define FS_MIB (1ll << 20)
#define FS_GIB (1ll << 30)
#define FS_USEC_MS 1000ll
#define FS_USEC_S 1000000ll
#define FS_USEC_MIN (60ll * FS_USEC_S)
#define FS_USEC_DAY (86400ll * FS_USEC_S)

/* The [limits] section of both daemons; TYPE is the config struct with an fs_limits_config
 * member called `limits`. */
#define FS_LIMITS_KEYS(TYPE)                                                                       \
    {.section = "limits",                                                                          \
     .key = "chunk_size",                                                                          \
     .type = FS_CFG_SIZE,                                                                          \
     .def = "1MiB",                                                                                \
     .offset = offsetof(TYPE, limits.chunk_size),                                                  \
     .min = 4 * FS_KIB,                                                                            \
     .max = 64 * FS_MIB,                                                                           \
     .doc = "bytes per chunk when a tensor is sent in pieces (4KiB..64MiB)"},                      \
        {.section = "limits",                                                                      \
         .key = "max_message",                                                                     \
         .type = FS_CFG_SIZE,                                                                      \
         .def = "256MiB",                                                                          \
         .offset = offsetof(TYPE, limits.max_message),                                             \
         .min = 64 * FS_KIB,                                                                       \
         .max = FS_GIB,                                                                            \
         .doc = "largest message accepted (ZMQ_MAXMSGSIZE; must exceed chunk_size by 4KiB)"},      \
        {.section = "limits",                                                                      \
         .key = "max_frames",                                                                      \
         .type = FS_CFG_INT,                                                                       \
         .def = "1024",                                                                            \
         .offset = offsetof(TYPE, limits.max_frames),                                              \
         .min = 1,                                                                                 \
         .max = 1024,                                                                              \
         .doc = "most frames in one multipart message (1..1024)"},                                 \
    {                                                                                              \
        .section = "limits", .key = "max_protocol_errors", .type = FS_CFG_INT, .def = "10",        \
        .offset = offsetof(TYPE, limits.max_protocol_errors), .min = 0, .max = 1000000,            \
        .doc = "malformed messages tolerated from one peer in a round before it is dropped"        \
    }

/* Cross-key checks of [limits]: 0 or FS_EFORMAT with "[limits] ...: problem" in d. */
int fs_limits_validate(const fs_limits_config *l, fs_diag *d);

#endif
