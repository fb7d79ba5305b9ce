/*
 * loop.c — poll-timeout arithmetic for the daemons' main loops: the time until the earliest of
 * several deadlines (round timeouts, retries, the watchdog), rounded up so the loop sleeps until
 * a deadline has really passed instead of spinning through its last fraction of a millisecond.
 */
#include <stdint.h>

#include "fs_daemon.h"

long fs_loop_timeout_ms(uint64_t now_usec, const uint64_t *deadlines_usec, size_t n) {
    uint64_t earliest = 0;
    for (size_t i = 0; i < n; i++) {
        if (deadlines_usec[i] != 0 && (earliest == 0 || deadlines_usec[i] < earliest))
            earliest = deadlines_usec[i];
    }
    if (earliest == 0)
        return -1;
    if (earliest <= now_usec)
        return 0;
    uint64_t diff = earliest - now_usec;
    uint64_t ms = diff / 1000 + (diff % 1000 != 0);
    return ms > INT32_MAX ? (long)INT32_MAX : (long)ms;
}
