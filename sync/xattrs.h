/*
 * xattrs — the user.meshfs.* extended attributes (INTERFACE.md, "Extended attributes").
 *
 * Values are computed from the namespace and the daemon's status on each call. Names outside
 * user.meshfs.* are not ours: get gives -ENODATA, set gives -ENOTSUP.
 */
#ifndef MESHFS_XATTRS_H
#define MESHFS_XATTRS_H

#include <stddef.h>
#include <stdint.h>

struct daemon;

/* The value of @name on @ino as a new string in *value (its length in *len). 0 or -errno:
 * -ENODATA for a name that does not apply to that node. */
int xattr_get(struct daemon *d, uint64_t ino, const char *name, char **value, size_t *len);

/* The NUL-separated list of names that apply to @ino, as listxattr(2) returns. */
int xattr_list(struct daemon *d, uint64_t ino, char **names, size_t *len);

/* Sets @name (prefetch, pin, evict) on @ino. 0 or -errno (-EINVAL for a bad value). */
int xattr_set(struct daemon *d, uint64_t ino, const char *name, const char *value, size_t len);

#endif
