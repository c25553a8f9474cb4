/*
 * util — small helpers shared by every module: clocks, paths, string building.
 */
#ifndef MESHFS_UTIL_H
#define MESHFS_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* CLOCK_REALTIME in nanoseconds / seconds. */
int64_t now_ns(void);
int64_t now_s(void);
/* CLOCK_MONOTONIC in nanoseconds. */
int64_t mono_ns(void);

/* mkdir -p with @mode for each created component. Returns 0 or -errno. */
int mkdir_p(const char *path, mode_t mode);

/* Joins @a and @b with one '/' into a new string (NULL on ENOMEM); b may be "" (returns a). */
char *path_join(const char *a, const char *b);

/*
 * True when @rel is a clean relative path: not empty, no leading '/', no "." or ".."
 * component, no empty component, no NUL (by construction) and no control characters.
 */
bool path_is_clean_relative(const char *rel);

/* True when @path equals @dir or lies below it (both absolute, no trailing '/'). */
bool path_is_under(const char *path, const char *dir);

/* Reads a whole small file (< 1 MiB) into a new NUL-terminated string. 0 or -errno. */
int read_small_file(const char *path, char **out);

/* Strips leading and trailing whitespace in place; returns @s. */
char *str_strip(char *s);

/* Reads up to @len bytes into @buf, retrying EINTR and short counts: the count (less than @len
 * only at the end of the file) or -errno. */
ssize_t read_upto(int fd, void *buf, size_t len);

/* Full write that retries on EINTR and short counts. 0 or -errno. */
int write_all(int fd, const void *buf, size_t len);

/* Exactly @len bytes at @off, retrying EINTR and short counts. 0 or -errno (-EIO when the
 * file ends first, or a write makes no progress). */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
int pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

#endif
