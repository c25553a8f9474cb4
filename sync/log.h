/*
 * log — the one log sink of meshfs.
 *
 * Messages carry a syslog level and are filtered before they are formatted, so a disabled
 * LOG_DEBUG line costs one comparison. By default lines go to stderr with a timestamp; the
 * daemon points the sink at a file, and unit tests install their own sink to capture lines.
 */
#ifndef MESHFS_LOG_H
#define MESHFS_LOG_H

#include <syslog.h>

typedef void (*log_sink_fn)(int level, const char *line, void *arg);

/* Writes one line at @level (LOG_ERR … LOG_DEBUG) if @level passes the filter. Thread-safe. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Lines above @level (numerically greater) are dropped. Default LOG_INFO. */
void log_set_level(int level);
int log_get_level(void);

/* Replaces the sink; NULL restores stderr. @arg is passed to @fn unchanged. */
void log_set_sink(log_sink_fn fn, void *arg);

/* Appends to @path from now on (creating it 0644). Returns 0 or -errno. */
int log_open_file(const char *path);

/* "err", "warning", "info", "debug" -> level; returns -EINVAL for anything else. */
int log_parse_level(const char *name);

#endif
