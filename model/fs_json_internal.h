/*
 * fs_json_internal.h — small JSON text helpers shared by the model-format parsers (safetensors
 * header, architecture JSON). Private to model/ (STYLE C1).
 */
#ifndef FS_JSON_INTERNAL_H
#define FS_JSON_INTERNAL_H

#include <stddef.h>

/* Scans JSON text for nesting depth (objects and arrays, strings skipped). Returns the byte offset
 * of the bracket that first goes deeper than `limit`, or (size_t)-1 if the text never does. Runs
 * before the recursive parser so that hostile input cannot exhaust the stack. */
size_t fs_json_depth_exceeded(const char *s, size_t len, int limit);

/* Finds the last key of the top-level object that starts before byte `pos` and copies it
 * (unescaped only as far as plain characters go; at most cap-1 bytes) into `out`. *depth_at gets
 * the nesting depth at `pos` (1 = directly inside the top-level object). Returns 1 if a key was
 * found, 0 otherwise. Used to say which tensor a JSON syntax error is in. */
int fs_json_key_before(const char *s, size_t len, size_t pos, char *out, size_t cap,
                       int *depth_at);

/* Copies `s` into `buf` for an error message: control characters (< 0x20, 0x7f) become '?', and
 * text longer than cap-1 bytes is cut and ends in "...". Returns buf. Untrusted names and JSON
 * excerpts go through this so that a hostile file cannot forge log lines. */
const char *fs_json_printable(const char *s, char *buf, size_t cap);

#endif
