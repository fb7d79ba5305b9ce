/*
 * fs_log.h — the one logging facade (STYLE C15). Libraries call fs_log_kv with NULL-terminated
 * "KEY", "value" pairs (journal field names: JOB, ROUND, AGENT, PHASE, REASON, ...). Where lines
 * go is decided by the program: the default sink writes readable lines to stderr; daemon/ installs
 * a journal sink under systemd.
 */
#ifndef FS_LOG_H
#define FS_LOG_H

#include <stdarg.h>

enum { FS_LOG_ERR = 3, FS_LOG_WARNING = 4, FS_LOG_NOTICE = 5, FS_LOG_INFO = 6, FS_LOG_DEBUG = 7 };

/* kv: "KEY", "value", ..., NULL. file/line/func: the call site. */
typedef void (*fs_log_sink)(int level, const char *file, int line, const char *func,
                            const char *msg, const char *const *kv, void *ud);

/* Not thread-safe: call once at start-up, before other threads log. */
void fs_log_set_sink(fs_log_sink sink, void *ud);
void fs_log_set_level(int max_level);   /* messages above max_level are dropped */
int fs_log_level(void);

void fs_log_at(int level, const char *file, int line, const char *func, const char *msg, ...);
#define fs_log_kv(level, ...) fs_log_at((level), __FILE__, __LINE__, __func__, __VA_ARGS__)

/* The default sink: "2026-05-01T10:00:00Z warn msg KEY=value KEY2=\"v v\"" on stderr. */
void fs_log_stderr_sink(int level, const char *file, int line, const char *func, const char *msg,
                        const char *const *kv, void *ud);

#endif
